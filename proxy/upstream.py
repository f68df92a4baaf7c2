"""One upstream call: the headers that go and come back, the timeouts, the idle watch."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from .config import AccountConfig, Timeouts
from .egress import ProxyURL
from .errors import UpstreamTimeout
from .wire import Client, Response

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# The client's credentials and identity never go upstream; the account's do.
_DROP_REQUEST = HOP_BY_HOP | {
    "host",
    "content-length",
    "authorization",
    "x-api-key",
    "api-key",
    "cookie",
    "accept-encoding",
    "openai-organization",
    "openai-project",
    "x-forwarded-for",
    "forwarded",
    # seamline already holds the whole body: asking the upstream for "100 Continue"
    # could only stall the request.
    "expect",
    # aiohttp inflated the client's body; it goes upstream as it is now.
    "content-encoding",
}
_DROP_RESPONSE = HOP_BY_HOP | {
    "content-length",
    "content-encoding",
    "set-cookie",
    "server",
    "date",
    "x-request-id",
    "alt-svc",
    "strict-transport-security",
}


def _connection_tokens(headers: Mapping[str, str]) -> frozenset[str]:
    """Headers a ``Connection`` header names are hop-by-hop too (RFC 9110, 7.6.1)."""
    value = headers.get("Connection")
    if not value:
        return frozenset()
    return frozenset(t.strip().lower() for t in value.split(",") if t.strip())


def make_session() -> aiohttp.ClientSession:
    """The aiohttp session for OAuth token calls; /v1 calls go through :mod:`.wire`."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=None),
        skip_auto_headers=("User-Agent",),
        cookie_jar=aiohttp.DummyCookieJar(),
    )


def target_url(base_url: str, tail: str, query: str) -> str:
    """``base_url`` + the client's path after ``/v1`` + its query string."""
    url = base_url.rstrip("/") + "/" + tail.lstrip("/")
    return f"{url}?{query}" if query else url


def request_headers(
    client: Mapping[str, str], account: AccountConfig, request_id: str, token: str | None = None
) -> CIMultiDict[str]:
    """The client's headers minus its credentials and hop-by-hop ones, plus the account's."""
    out: CIMultiDict[str] = CIMultiDict()
    drop = _DROP_REQUEST | _connection_tokens(client)
    for name, value in client.items():
        if name.lower() not in drop:
            out.add(name, value)
    out["Accept-Encoding"] = "identity"
    out["X-Request-ID"] = request_id
    key = token or account.api_key
    if key:
        out["Authorization"] = f"Bearer {key}"
    for name, value in account.headers.items():
        out[name] = value
    return out


def response_headers(upstream: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    drop = _DROP_RESPONSE | _connection_tokens(upstream)
    for name, value in upstream.items():
        if name.lower() not in drop:
            out.add(name, value)
    if "x-request-id" in upstream:
        out["X-Upstream-Request-ID"] = upstream["x-request-id"]
    return out


async def send(
    client: Client,
    method: str,
    url: str,
    headers: CIMultiDict[str],
    body: bytes,
    timeouts: Timeouts,
    proxy: ProxyURL | None = None,
) -> Response:
    """Send the request (through ``proxy`` when given); return the response once its
    headers are in. The caller owns the response and must close it.
    """
    return await client.request(
        method,
        url,
        headers,
        body,
        connect=timeouts.connect,
        head=timeouts.headers,
        total=timeouts.total,
        proxy=proxy,
    )


class IdleWatch:
    """Fails the body read of ``upstream`` once it has waited ``idle`` seconds for data.

    The reader sets ``last`` when a read returns. One timer per stream, re-armed only
    when it fires, not rescheduled on every read (a cost paid per event). While
    ``busy()`` (the reader is waiting for its client, so not reading) the wait does
    not count.
    """

    __slots__ = ("_busy", "_idle", "_loop", "_timer", "_upstream", "last")

    def __init__(
        self,
        upstream: Response,
        idle: float,
        busy: Callable[[], bool] | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self.last = self._loop.time()
        self._upstream = upstream
        self._idle = idle
        self._busy = busy
        self._timer = self._loop.call_later(idle, self._check) if idle > 0 else None

    def seen(self) -> None:
        """A read returned: the wait starts again from now."""
        self.last = self._loop.time()

    def _check(self) -> None:
        now = self._loop.time()
        if self._busy is not None and self._busy():
            self.last = now
        wait = self.last + self._idle - now
        if wait > 0:
            self._timer = self._loop.call_later(wait, self._check)
            return
        self._timer = None
        self._upstream.fail(UpstreamTimeout(f"upstream sent nothing for {self._idle:g}s"))

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
