"""What the handlers share, and the typed aiohttp key it is kept under."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiohttp import web

from proxy.gateway.gate import Gate
from proxy.gateway.metrics import Metrics
from proxy.gateway.outcome import Outcome
from proxy.gateway.runtime import Runtime
from proxy.gateway.usage import Usage


@dataclass
class App:
    """What the handlers share: the runtime (swapped by a reload), admission, metrics,
    usage."""

    runtime: Runtime
    gate: Gate
    metrics: Metrics
    usage: Usage = field(default_factory=lambda: Usage(time.time()))

    def book(self, outcome: Outcome, route: str) -> None:
        """A finished /v1 request, into the metrics and the usage."""
        self.metrics.record(outcome, route)
        self.usage.record(outcome, time.time())


APP: web.AppKey[App] = web.AppKey("app")
