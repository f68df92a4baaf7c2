"""One /v1 request on its way upstream and back: what each step needs of it, as one."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

from proxy.config import Api
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
    # The request for accounts that speak the Responses API (``api = "responses"``),
    # sent to /v1/responses; None: such accounts are not asked.
    native: Bodies | None = None
    # The request for accounts that speak Anthropic's Messages API, sent to /v1/messages.
    messages: Bodies | None = None
    excluded: tuple[str, ...] = ()  # accounts that cannot serve this request
    # Chat bodies for the accounts that take another than ``bodies`` (a translated
    # request asks each upstream in its own words, e.g. its reasoning switch).
    own: Mapping[str, Bodies] | None = None

    def started(self) -> None:
        self.bodies = self.native = self.messages = self.own = None
        self.headers = _NO_HEADERS

    def for_account(self, api: Api, name: str) -> tuple[str, Bodies]:
        """The upstream path (after /v1/) and the bodies for one account."""
        if api is Api.RESPONSES and self.native is not None:
            return "responses", self.native
        if api is Api.MESSAGES and self.messages is not None:
            return "messages", self.messages
        if self.own is not None and name in self.own:
            return self.path, self.own[name]
        assert self.bodies is not None
        return self.path, self.bodies
