"""One upstream call: the headers that go and come back, the timeouts, the idle watch."""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import re
import weakref
from collections.abc import Callable, Mapping
from typing import ClassVar

from multidict import CIMultiDict

from proxy.config import AccountConfig, Kind, Timeouts
from proxy.config.egress import ProxyURL
from proxy.errors import UpstreamError, UpstreamTimeout
from proxy.logs import redactor
from proxy.upstream.wire import ConnectionPool, Response

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
# The version of Anthropic's API seamline's Messages translation speaks.
ANTHROPIC_VERSION = "2023-06-01"

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
    # Who the client is and what it reached: a client can spoof every one of these, and
    # an upstream (or a gateway in front of it) may trust them for identity, rate
    # limits, routing or the method.
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-server",
    "x-forwarded-prefix",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "forwarded",
    "via",
    "x-real-ip",
    "true-client-ip",
    "x-client-ip",
    "client-ip",
    "x-cluster-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-original-forwarded-for",
    "x-originating-ip",
    "x-remote-ip",
    "x-remote-addr",
    "x-host",
    "x-original-host",
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    # seamline already holds the whole body: asking the upstream for "100 Continue"
    # could only stall the request.
    "expect",
    # aiohttp inflated the client's body; it goes upstream as it is now.
    "content-encoding",
}
# Response headers seamline always sets itself (Content-Type) or on its own terms
# (Retry-After, only where it means something); the rest pass only when the operator
# lists them in ``server.forward_response_headers``.
RETRY_HEADERS = ("retry-after", "retry-after-ms")
_RETRY_STATUSES = frozenset({429, 503, 529})
# Never forwarded, whatever the operator allows: framing seamline redoes, its own
# request id, and the account's credentials and sessions.
_NEVER = HOP_BY_HOP | {
    "content-length",
    "content-encoding",
    "date",
    "x-request-id",
    "set-cookie",
    "authorization",
    "www-authenticate",
}
UPSTREAM_ID = "X-Upstream-Request-ID"
_UPSTREAM_IDS = ("x-request-id", "request-id")
_SANE_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


class HeaderFilter:
    """Which upstream response headers reach the client: names and globs, compiled
    once per config (exact names are a set lookup, the per-request cost)."""

    __slots__ = ("_exact", "_globs")

    def __init__(self, allowed: tuple[str, ...]) -> None:
        names = [a.lower() for a in allowed]
        self._exact = frozenset(n for n in names if not any(c in n for c in "*?["))
        globs = [fnmatch.translate(n) for n in names if n not in self._exact]
        self._globs = re.compile("|".join(globs)) if globs else None

    def allows(self, lowered: str) -> bool:
        if lowered in self._exact:
            return True
        return self._globs is not None and self._globs.match(lowered) is not None


@functools.lru_cache(maxsize=8)
def header_filter(allowed: tuple[str, ...]) -> HeaderFilter:
    return HeaderFilter(allowed)


def _connection_tokens(headers: Mapping[str, str]) -> frozenset[str]:
    """Headers a ``Connection`` header names are hop-by-hop too (RFC 9110, 7.6.1)."""
    value = headers.get("Connection")
    if not value:
        return frozenset()
    return frozenset(t.strip().lower() for t in value.split(",") if t.strip())


def target_url(base_url: str, path: str, query: str) -> str:
    """``base_url`` + the client's ``path`` after ``/v1/`` (as it was encoded) + its query."""
    url = base_url.rstrip("/") + "/" + path.lstrip("/")
    return f"{url}?{query}" if query else url


def request_headers(
    client: Mapping[str, str], account: AccountConfig, request_id: str, token: str | None = None
) -> CIMultiDict[str]:
    """The client's headers minus its credentials, identity and hop-by-hop ones, plus
    the account's. A name with an underscore never goes: servers that fold ``_`` into
    ``-`` would read it as another header (``X_Real_IP`` as ``X-Real-IP``)."""
    out: CIMultiDict[str] = CIMultiDict()
    drop = _DROP_REQUEST | _connection_tokens(client)
    for name, value in client.items():
        if name.lower() not in drop and "_" not in name:
            out.add(name, value)
    out["Accept-Encoding"] = "identity"
    out["X-Request-ID"] = request_id
    key = token or account.api_key
    if account.kind is Kind.ANTHROPIC:
        # Anthropic's API reads its key from x-api-key and needs a version; a Messages
        # client's own anthropic-version (and betas) went through above.
        if key:
            out["x-api-key"] = key
        if "anthropic-version" not in out:
            out["anthropic-version"] = ANTHROPIC_VERSION
    elif key:
        out["Authorization"] = f"Bearer {key}"
    for name, value in account.headers.items():
        out[name] = value
    return out


def response_headers(
    upstream: Mapping[str, str], status: int, allowed: HeaderFilter
) -> CIMultiDict[str]:
    """What of an upstream's response headers the client gets: its content type, its
    Retry-After on a 429 or 503, its request id as X-Upstream-Request-ID, and what the
    operator allowed; never a value that holds one of seamline's secrets."""
    out: CIMultiDict[str] = CIMultiDict()
    never = _NEVER | _connection_tokens(upstream)
    for name, value in upstream.items():
        low = name.lower()
        if low == "content-type":
            out.add(name, value)
        elif low in RETRY_HEADERS:
            if status in _RETRY_STATUSES:
                out.add(name, value)
        elif low not in never and allowed.allows(low) and not redactor.holds_secret(value):
            out.add(name, value)
    for id_name in _UPSTREAM_IDS:
        given = upstream.get(id_name)
        if given and _SANE_ID.fullmatch(given) and not redactor.holds_secret(given):
            out[UPSTREAM_ID] = given
            break
    return out


async def send(
    client: ConnectionPool,
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


async def read_body(
    upstream: Response, limit: int, timeouts: Timeouts, first: bytes = b""
) -> bytes:
    """Read a whole non-streamed upstream body, refusing one over ``limit`` bytes;
    ``first`` is its first read, when the caller already made it."""
    parts: list[bytes] = [first]
    size = len(first)
    watch = IdleWatch(upstream, timeouts.idle)
    try:
        while chunk := await upstream.read():
            watch.seen()
            size += len(chunk)
            if size > limit:
                raise UpstreamError(f"upstream response exceeds {limit} bytes")
            parts.append(chunk)
    finally:
        watch.cancel()
        upstream.close()
    return b"".join(parts)
