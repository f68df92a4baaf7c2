"""One upstream call: the headers that go and come back, the timeouts, the idle watch."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Mapping
from typing import ClassVar

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from .config import AccountConfig, Timeouts
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
) -> Response:
    """Send the request; return the response once its headers are in.

    The caller owns the response and must close it.
    """
    return await client.request(
        method,
        url,
        headers,
        body,
        connect=timeouts.connect,
        head=timeouts.headers,
        total=timeouts.total,
    )


class IdleWatch:
    """Fails the body read of ``upstream`` once it has waited ``idle`` seconds for data.

    The reader sets ``last`` when a read returns; nothing is rescheduled per read (a
    cost paid per event). A loop's watches share one timer (``_Ticker``), so the
    timeout fires between ``idle`` and a quarter of it (at most a second) later. While
    ``busy()`` (the reader is waiting for its client, so not reading) the wait does
    not count.
    """

    __slots__ = ("_busy", "_idle", "_loop", "_ticker", "_upstream", "last")

    def __init__(
        self,
        upstream: Response,
        idle: float,
        busy: Callable[[], bool] | None = None,
    ) -> None:
        self._loop = loop = asyncio.get_running_loop()
        self.last = loop.time()
        self._upstream = upstream
        self._idle = idle
        self._busy = busy
        self._ticker = _Ticker.of(loop).add(self) if idle > 0 else None

    def seen(self) -> None:
        """A read returned: the wait starts again from now."""
        self.last = self._loop.time()

    def _check(self, now: float) -> None:
        if self._busy is not None and self._busy():
            self.last = now
        elif now - self.last >= self._idle:
            self.cancel()
            self._upstream.fail(UpstreamTimeout(f"upstream sent nothing for {self._idle:g}s"))

    def cancel(self) -> None:
        if self._ticker is not None:
            self._ticker.discard(self)
            self._ticker = None


class _Ticker:
    """The one timer of a loop's idle watches. A uvloop TimerHandle is about 540 B, and
    each stream held one for its whole life; this ticks four times per shortest idle
    timeout in use (at most once a second) while any watch is on, and checks each
    (about half a microsecond a watch)."""

    __slots__ = ("_every", "_timer", "_watches")

    # A ticker holds no reference to its loop: the entry goes with the loop.
    _by_loop: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Ticker]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self) -> None:
        self._watches: set[IdleWatch] = set()
        self._every = 1.0
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _Ticker:
        ticker = cls._by_loop.get(loop)
        if ticker is None:
            ticker = cls._by_loop[loop] = cls()
        return ticker

    def add(self, watch: IdleWatch) -> _Ticker:
        self._watches.add(watch)
        every = min(1.0, watch._idle / 4)
        if self._timer is None or every < self._every:
            self._every = every
            if self._timer is not None:
                self._timer.cancel()
            self._timer = asyncio.get_running_loop().call_later(every, self._tick)
        return self

    def discard(self, watch: IdleWatch) -> None:
        self._watches.discard(watch)
        if not self._watches and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        for watch in list(self._watches):
            watch._check(now)
        if self._watches:
            self._timer = loop.call_later(self._every, self._tick)
