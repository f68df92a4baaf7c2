"""A lean HTTP/1.1 client for upstream calls: keep-alive pool, httptools parsing.

Why not aiohttp's client: a relayed event is one small read, and aiohttp's client
spends far more Python per read (its StreamReader, a future and a task wake-up for
each) than the rest of seamline together; its objects also cost kilobytes per open
stream. Here a body can be *pushed*: each decoded piece goes from the socket
callback straight to a sink, with no task switch, which is what the relay's hot
path uses once the client's headers are out. Before that (and for whole bodies) it
is *pulled* with ``await read()``.

Every failure comes out as a :mod:`proxy.errors` ``UpstreamError``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Callable, Mapping
from typing import TypeVar

from yarl import URL

from proxy.config.egress import ProxyURL
from proxy.errors import (
    UpstreamConnectTimeout,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from proxy.upstream.conn import NO_HEADERS, Conn, PoolKey, Response, Stale
from proxy.upstream.tunnel import Handshake, authority, connect_request

__all__ = ["NO_HEADERS", "ConnectionPool", "Response"]

_P = TypeVar("_P", bound=asyncio.BaseProtocol)

_DNS_TTL = 300.0  # seconds an upstream host's looked-up addresses are used


class ConnectionPool:
    """Connections to every upstream, kept alive between requests.

    No cap on connections: concurrency is limited where requests come in, and a cap
    here would queue streams silently behind each other.
    """

    def __init__(self, keepalive: float = 30.0) -> None:
        self._keepalive = keepalive
        # Per upstream, its idle connections: a dict as an ordered set, so that a closing
        # one leaves in O(1) and the most recently used one is taken first.
        self._idle: dict[PoolKey, dict[Conn, None]] = {}
        self._ssl: ssl.SSLContext | None = None
        self._dns: dict[tuple[str, int], tuple[float, list[str]]] = {}
        self._resolving: dict[tuple[str, int], asyncio.Task[list[str]]] = {}

    def put(self, conn: Conn) -> None:
        if conn.closed:
            return
        # Idle connections are read: whatever their upstream sends unasked (or its
        # close) is seen at once and closes them. A pulled body's last read may have
        # paused reading; left paused, the bytes would wait for the next request.
        conn.resume()
        conn.reused = True
        self._idle.setdefault(conn.key, {})[conn] = None
        loop = asyncio.get_running_loop()
        conn.idle_timer = loop.call_later(self._keepalive, conn.abort)

    def forget(self, conn: Conn) -> None:
        idle = self._idle.get(conn.key)
        if idle:
            idle.pop(conn, None)

    def _take(self, key: PoolKey) -> Conn | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.popitem()[0]
            if conn.idle_timer is not None:
                conn.idle_timer.cancel()
                conn.idle_timer = None
            if conn.closed or conn.transport is None or conn.transport.is_closing():
                continue
            if conn.stirred():
                conn.abort()  # unasked bytes, a close or a reset the loop has not seen yet
                continue
            return conn
        return None

    async def _connect(self, key: PoolKey, within: float) -> Conn:
        """A new connection for ``key``: straight to the upstream, to the proxy (an
        http upstream: requests then go in absolute form), or through a CONNECT tunnel
        (an https upstream behind a proxy: TLS to the upstream, verified by its name,
        inside the tunnel). ``within`` covers all of it."""
        scheme, host, port, proxy = key
        context: ssl.SSLContext | None = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        via = f" (through proxy {proxy.label})" if proxy is not None else ""
        try:
            async with asyncio.timeout(within or None):
                if proxy is None:
                    name = host if context is not None else None
                    _, conn = await self._open(lambda: Conn(self, key), host, port, context, name)
                    return conn
                if context is None:
                    _, conn = await self._open(
                        lambda: Conn(self, key), proxy.host, proxy.port, None, None
                    )
                    return conn
                return await self._tunnel(key, proxy, context)
        except TimeoutError:
            raise UpstreamConnectTimeout(
                f"upstream connect timed out after {within:g}s{via}"
            ) from None
        except ssl.SSLError as exc:
            reason = getattr(exc, "verify_message", None) or exc.reason or str(exc)
            raise UpstreamUnreachable(f"upstream unreachable: TLS failed: {reason}{via}") from exc
        except OSError as exc:
            # Behind a proxy, only the proxy (and the tunnel through it) was talked to.
            where = f"proxy {proxy.label}: " if proxy is not None else ""
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise UpstreamUnreachable(f"upstream unreachable: {where}{reason}") from exc

    async def _open(
        self,
        factory: Callable[[], _P],
        host: str,
        port: int,
        context: ssl.SSLContext | None,
        server_hostname: str | None,
    ) -> tuple[asyncio.Transport, _P]:
        """A connection to ``host``, each of its addresses tried in turn."""
        loop = asyncio.get_running_loop()
        failure: OSError | None = None
        for address in await self._addresses(host, port):
            try:
                transport, protocol = await loop.create_connection(
                    factory, address, port, ssl=context, server_hostname=server_hostname
                )
            except ssl.SSLError:
                raise
            except OSError as exc:
                failure = exc
                continue
            return transport, protocol
        assert failure is not None
        raise failure

    async def _tunnel(self, key: PoolKey, proxy: ProxyURL, context: ssl.SSLContext) -> Conn:
        _, host, port, _ = key
        transport, shake = await self._open(
            lambda: Handshake(proxy), proxy.host, proxy.port, None, None
        )
        conn = Conn(self, key)
        try:
            transport.write(connect_request(host, port, proxy))
            status, reason = await shake.answer
            if not 200 <= status < 300:
                raise UpstreamUnreachable(
                    f"upstream unreachable: proxy {proxy.label} refused CONNECT to"
                    f" {authority(host, port)}: {status} {reason}".rstrip()
                )
            tls = await asyncio.get_running_loop().start_tls(
                transport, conn, context, server_hostname=host
            )
        except BaseException:
            transport.abort()
            raise
        assert tls is not None
        conn.connection_made(tls)
        return conn

    async def _addresses(self, host: str, port: int) -> list[str]:
        """The addresses of ``host``, looked up once per ``_DNS_TTL`` and once for all
        the connections waiting on it: uncached, a burst of new streams would queue a
        lookup each in the loop's small thread pool."""
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            return [host]
        loop = asyncio.get_running_loop()
        key = (host, port)
        known = self._dns.get(key)
        if known is not None and known[0] > loop.time():
            return known[1]
        lookup = self._resolving.get(key)
        if lookup is None:
            lookup = loop.create_task(self._lookup(host, port))
            self._resolving[key] = lookup
            lookup.add_done_callback(lambda t: self._looked_up(key, t))
        return await asyncio.shield(lookup)

    async def _lookup(self, host: str, port: int) -> list[str]:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        self._dns[(host, port)] = (loop.time() + _DNS_TTL, addresses)
        return addresses

    def _looked_up(self, key: tuple[str, int], task: asyncio.Task[list[str]]) -> None:
        self._resolving.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved: the waiters, if any are left, raise it

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        connect: float,
        head: float,
        total: float,
        proxy: ProxyURL | None = None,
    ) -> Response:
        """Send the request; return the answer once its headers are in.

        The caller owns the answer and must ``close()`` it. ``head``: seconds to wait
        for the headers; ``total``: seconds the whole answer may take (0: no limit);
        ``proxy``: the HTTP proxy to go through (see :mod:`.egress`), None for direct.
        """
        target = URL(url, encoded=True)
        scheme = target.scheme
        if scheme not in ("http", "https") or not target.raw_host:
            raise UpstreamUnreachable(f"upstream URL is not http(s): {scheme}://...")
        port = target.port or (443 if scheme == "https" else 80)
        key = (scheme, target.raw_host, port, proxy)
        # Through a proxy, an http request names its whole URL (and carries the proxy's
        # credentials); an https one goes through a tunnel as it would go direct.
        forward = proxy if scheme == "http" else None
        data = _serialize(method, target, port, headers, body, forward)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + head if head else None
        for attempt in range(2):
            # A retry after a stale pooled connection takes a new one: the other idle
            # ones may have been dropped by the upstream just the same.
            conn = self._take(key) if attempt == 0 else None
            if conn is None:
                conn = await self._connect(key, connect)
            resp = Response(loop)
            if total:
                resp._timer = loop.call_later(
                    total,
                    resp.fail,
                    UpstreamTimeout(f"upstream did not finish within {total:g}s"),
                )
            conn.start(resp, data, method == "HEAD")
            try:
                async with asyncio.timeout_at(deadline):
                    await resp._head
            except TimeoutError:
                resp.close()
                raise UpstreamTimeout(
                    f"upstream sent no response headers within {head:g}s"
                ) from None
            except Stale as exc:
                resp.close()
                if exc.unsent or _replayable(method, headers):
                    continue
                raise UpstreamProtocolError(
                    "upstream closed the connection unexpectedly (the request is not sent"
                    " again: the upstream may have acted on it)"
                ) from None
            except UpstreamError:
                resp.close()
                raise
            except BaseException:
                resp.close()
                raise
            if forward is not None and resp.status == 407:
                # Only a proxy asks for proxy credentials: it is seamline's own setup
                # that failed, not the upstream's answer to relay.
                resp.close()
                raise UpstreamUnreachable(
                    f"upstream unreachable: proxy {forward.label} refused the request:"
                    " 407 Proxy Authentication Required"
                )
            return resp
        raise UpstreamProtocolError("upstream closed the connection unexpectedly")

    def close(self) -> None:
        for conns in list(self._idle.values()):
            for conn in list(conns):
                conn.abort()
        self._idle.clear()


# When a request may go again on a new connection, after a reused one closed before
# any byte of the answer: Go's net/http rule (Transport, shouldRetryRequest). The
# upstream may have read the request and acted on it before closing (or crashing), and
# a POST sent twice is a completion paid for twice. So a request goes again only when
# it is known the upstream could not have read it (the write found the connection
# closed or reset: ``Stale.unsent``), or when it is replayable: a method that does not
# change anything, or a request whose client vouches for replays with an idempotency
# key. A request on a new connection is never sent again: nothing hints that a second
# one would fare better.
_REPLAYABLE = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


def _replayable(method: str, headers: Mapping[str, str]) -> bool:
    if method in _REPLAYABLE:
        return True
    return any(name.lower() in ("idempotency-key", "x-idempotency-key") for name in headers)


def _serialize(
    method: str,
    url: URL,
    port: int,
    headers: Mapping[str, str],
    body: bytes,
    forward: ProxyURL | None = None,
) -> bytes:
    host = url.raw_host or ""
    if ":" in host:
        host = f"[{host}]"
    if port != (443 if url.scheme == "https" else 80):
        host = f"{host}:{port}"
    target = url.raw_path_qs if forward is None else f"http://{host}{url.raw_path_qs}"
    lines = [f"{method} {target} HTTP/1.1"]
    if "Host" not in headers:
        lines.append(f"Host: {host}")
    if forward is not None and forward.authorization:
        lines.append(f"Proxy-Authorization: {forward.authorization}")
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise UpstreamError(f"header {name!r} holds a line break")
        lines.append(f"{name}: {value}")
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")
    return head + body if body else head
