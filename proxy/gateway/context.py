"""One /v1 request on its way upstream and back: what each step needs of it, as one."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

from proxy.core.plan import Bodies, Wants
from proxy.gateway.outcome import Outcome
from proxy.gateway.routes import Route

_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


@dataclass(slots=True)
class Call:
    """What the routing loop and the answer's making need of one client request.

    ``path`` and ``query`` go upstream as the client encoded them: decoded, an encoded
    '?' or '/' would change what the upstream is asked for. Once an answer is under
    way the request's headers and bodies are let go (``started``): a stream can live
    for minutes, and no other account will be asked.
    """

    method: str
    path: str  # after /v1/, as the client encoded it
    query: str
    headers: Mapping[str, str]  # the client's
    route: Route
    outcome: Outcome
    model: str | None  # the upstream model, aliases applied
    wants: Wants
    bodies: Bodies | None
    tracer: Any = None  # a logger while DEBUG_STREAMING is on
    tried: list[str] = field(default_factory=list)  # accounts this request went to

    def started(self) -> None:
        self.bodies = None
        self.headers = _NO_HEADERS
