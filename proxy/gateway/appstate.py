"""What the handlers share, and the typed aiohttp key it is kept under."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from proxy.gateway.gate import Gate
from proxy.gateway.metrics import Metrics
from proxy.gateway.runtime import Runtime


@dataclass
class App:
    """What the handlers share: the runtime (swapped by a reload), admission, metrics."""

    runtime: Runtime
    gate: Gate
    metrics: Metrics


APP: web.AppKey[App] = web.AppKey("app")
