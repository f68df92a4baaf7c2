"""A CONNECT tunnel through an HTTP proxy, up to the proxy's answer (RFC 9110, 9.3.6).

:mod:`.wire` opens the TCP connection to the proxy with :class:`Handshake` as its
protocol, writes :func:`connect_request`, awaits ``Handshake.answer``, then starts
TLS to the upstream over the same transport.
"""

from __future__ import annotations

import asyncio
import re
from typing import cast

from proxy.config.egress import ProxyURL
from proxy.errors import UpstreamUnreachable
from proxy.upstream.conn import _MAX_HEAD

_STATUS = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?: ([^\r\n]*))?")


def authority(host: str, port: int) -> str:
    """``host:port`` as a request target or Host header writes it (IPv6 bracketed)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def connect_request(host: str, port: int, proxy: ProxyURL) -> bytes:
    """The CONNECT request: the proxy's credentials go here, never inside the tunnel."""
    target = authority(host, port)
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
    if proxy.authorization:
        lines.append(f"Proxy-Authorization: {proxy.authorization}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


class Handshake(asyncio.Protocol):
    """Reads the proxy's answer to CONNECT, up to the end of its head.

    ``answer`` resolves with the status and the reason phrase (printable, cut short:
    it goes into messages), or fails with an UpstreamUnreachable.
    """

    def __init__(self, proxy: ProxyURL) -> None:
        self._proxy = proxy
        self.answer: asyncio.Future[tuple[int, str]] = asyncio.get_running_loop().create_future()
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio's, but they are ones.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.answer.done():
            return
        start = max(0, len(self._buffer) - 3)  # the end may straddle two reads
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n", start)
        if end < 0 and len(self._buffer) <= _MAX_HEAD:
            return
        if end < 0 or end > _MAX_HEAD:
            self._fail(f"its answer to CONNECT exceeds {_MAX_HEAD} bytes")
            return
        if self._transport is not None:
            self._transport.pause_reading()  # the rest belongs to TLS
        match = _STATUS.match(self._buffer)
        if match is None:
            self._fail("its answer to CONNECT is not HTTP")
            return
        status = int(match[1])
        if 200 <= status < 300 and len(self._buffer) > end + 4:
            # A TLS server speaks second: these bytes are the proxy's, not the upstream's.
            self._fail("it sent bytes after its answer to CONNECT")
            return
        reason = (match[2] or b"").decode("latin-1")
        reason = "".join(c for c in reason if c.isprintable())[:80]
        self.answer.set_result((status, reason))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail("it closed the connection before answering CONNECT")

    def _fail(self, problem: str) -> None:
        if not self.answer.done():
            self.answer.set_exception(
                UpstreamUnreachable(f"upstream unreachable: proxy {self._proxy.label}: {problem}")
            )
            self.answer.exception()  # retrieved: whoever still awaits it raises it
