"""A scripted upstream for the wire tests: real loopback connections, exact bytes.

Imported by the wire test modules, which also import its fixtures (``serve``,
``client``) so that pytest finds them.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Protocol

import pytest
from aiohttp import web

from proxy.upstream import wire

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"
STALE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale"  # what no one asked for


def chunks(*pieces: bytes) -> bytes:
    """``pieces`` in the chunked encoding, without the last chunk."""
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)


def large(size: int) -> bytes:
    """An answer with a body of ``size`` bytes, by its length."""
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (size, b"x" * size)


@cache
def bomb() -> bytes:
    """64 MiB of zeros, gzipped (about 64 KiB)."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1024 * 1024)
    return b"".join(z.compress(block) for _ in range(64)) + z.flush()


def split(data: bytes, parts: int) -> list[bytes]:
    size = -(-len(data) // parts)
    return [data[i : i + size] for i in range(0, len(data), size)]


# -- the upstream -------------------------------------------------------------------


class Peer:
    """One connection the upstream accepted: requests are read off it, exact bytes
    written to it, and it notes when the client closes it."""

    def __init__(
        self,
        upstream: Upstream,
        index: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.upstream = upstream
        self.index = index  # the order it was accepted in
        self.reader = reader
        self.writer = writer
        self.eof = asyncio.Event()
        self.sent = 0  # bytes written to the client

    async def request(self) -> bytes:
        """The next request's raw bytes (its head, then a Content-Length body); b"" once
        the client closed the connection."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            self.eof.set()
            return b""
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        raw = head + await self.reader.readexactly(length)
        self.upstream.requests.append(raw)
        return raw

    async def send(self, *pieces: bytes, pause: float = 0.0) -> None:
        """Write each piece on its own, with ``pause`` seconds after each."""
        for piece in pieces:
            self.writer.write(piece)
            await self.writer.drain()
            self.sent += len(piece)
            if pause:
                await asyncio.sleep(pause)

    async def until_closed(self) -> None:
        """Say nothing more: wait for the client to close the connection."""
        try:
            while await self.reader.read(65536):
                pass
        except ConnectionError:
            pass
        self.eof.set()

    async def closed(self, within: float = 2.0) -> bool:
        """Whether the client closes the connection within ``within`` seconds (the
        handler must be reading it, with ``request()`` or ``until_closed()``)."""
        try:
            await asyncio.wait_for(self.eof.wait(), within)
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        self.writer.close()


Handler = Callable[[Peer], Coroutine[Any, Any, None]]


class Upstream:
    """A loopback HTTP server: every connection it accepts runs ``handler``. It keeps
    each connection (``peers``) and the raw bytes of every request it read."""

    def __init__(self, handler: Handler, host: str) -> None:
        self.handler = handler
        self.host = host
        self.port = 0
        self.peers: list[Peer] = []
        self.requests: list[bytes] = []
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def url(self, target: str = "/v1/x") -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{target}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback, so that the handler runs as a task of our own, which the
        # teardown cancels and whose failure it reports.
        peer = Peer(self, len(self.peers), reader, writer)
        self.peers.append(peer)
        self._tasks.append(asyncio.get_running_loop().create_task(self.handler(peer)))

    async def stop(self) -> list[BaseException]:
        """Stop serving and close every connection; return how handlers failed."""
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        for peer in self.peers:
            peer.close()
        await self._server.wait_closed()
        # The client going away mid-write is a handler's normal end.
        return [
            r for r in results if isinstance(r, Exception) and not isinstance(r, ConnectionError)
        ]


async def answer(peer: Peer, *responses: bytes) -> None:
    """Answer each request on ``peer`` with the next of ``responses``, the last one
    repeated, until the client closes the connection."""
    n = 0
    while await peer.request():
        await peer.send(responses[min(n, len(responses) - 1)])
        n += 1


def answering(*responses: bytes) -> Handler:
    return lambda peer: answer(peer, *responses)


def first_then_ok(handler: Handler, first: int = 1) -> Handler:
    """``handler`` on the first ``first`` connections; every later one answers OK."""

    async def run(peer: Peer) -> None:
        await (handler(peer) if peer.index < first else answer(peer, OK))

    return run


class Serve(Protocol):
    def __call__(self, handler: Handler, host: str = ...) -> Awaitable[Upstream]: ...


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start an :class:`Upstream` running a handler; each is stopped after the test,
    and a handler that failed fails the test."""
    upstreams: list[Upstream] = []

    async def _serve(handler: Handler, host: str = "127.0.0.1") -> Upstream:
        up = Upstream(handler, host)
        await up.start()
        upstreams.append(up)
        return up

    yield _serve
    failures = [exc for up in upstreams for exc in await up.stop()]
    if failures:
        raise failures[0]


@pytest.fixture
async def client() -> AsyncIterator[wire.ConnectionPool]:
    c = wire.ConnectionPool()
    yield c
    c.close()


# -- the client's side ----------------------------------------------------------------


async def call(
    client: wire.ConnectionPool,
    url: str,
    method: str = "GET",
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
    *,
    head: float = 5.0,
    total: float = 0.0,
) -> wire.Response:
    return await client.request(
        method, url, headers or {}, body, connect=5.0, head=head, total=total
    )


async def read_all(resp: wire.Response) -> bytes:
    parts: list[bytes] = []
    async with asyncio.timeout(5):
        while piece := await resp.read():
            parts.append(piece)
    return b"".join(parts)


async def fetch(
    client: wire.ConnectionPool,
    url: str,
    method: str = "GET",
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
) -> tuple[wire.Response, bytes]:
    """One whole exchange: the answer and its body, the answer closed."""
    resp = await call(client, url, method, body, headers)
    try:
        return resp, await read_all(resp)
    finally:
        resp.close()


# -- TLS ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for localhost and 127.0.0.1, and its key."""
    where = tmp_path_factory.mktemp("tls")
    cert, key = str(where / "cert.pem"), str(where / "key.pem")
    subprocess.run(
        [
            *(
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ),
            *("-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@dataclass
class TLSUpstream:
    """An HTTPS upstream answering GET /hello with "tls <Host>" (and GET /v1/models);
    it keeps the headers of every request."""

    runner: web.AppRunner
    port: int
    headers: list[dict[str, str]] = field(default_factory=list)


async def tls_upstream(cert: str, key: str) -> TLSUpstream:
    seen: list[dict[str, str]] = []

    async def hello(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.Response(text=f"tls {request.host}")

    async def models(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response({"object": "list", "data": [{"id": "m", "object": "model"}]})

    app = web.Application()
    app.router.add_get("/hello", hello)
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    return TLSUpstream(runner, int(runner.addresses[0][1]), seen)
