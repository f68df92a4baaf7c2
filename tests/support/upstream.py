"""The scripted fake upstream: loopback servers that answer what a test scripted.

One vocabulary, two depths. :class:`Upstream` is an aiohttp server that answers each
request with the next :class:`Script` (a status, headers, body pieces with pauses, an
ending): for tests that speak HTTP through seamline. :class:`RawUpstream` runs a
:data:`Handler` on every connection it accepts, and the handler writes exact bytes to
its :class:`Peer`, the head included: for the wire client's tests, which need bytes
aiohttp would never write. Both keep every request they read (``requests``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from support.builders import OK, completion, error_body, key_of, sse_stream

if TYPE_CHECKING:  # scripts/ is on pytest's path, not on that of support.hostile_upstreams
    from broken_upstreams import Scenario

# -- scripted answers over aiohttp ----------------------------------------------------


@dataclass
class Script:
    """What the fake upstream answers: status, headers, then body pieces with pauses."""

    pieces: list[bytes] = field(default_factory=list)
    status: int = 200
    content_type: str = "text/event-stream"
    pause: float = 0.01
    headers: dict[str, str] = field(default_factory=dict)
    delay_headers: float = 0.0
    # After the pieces: "end" finishes cleanly, "reset" aborts the connection,
    # "hang" keeps the connection open and silent.
    ending: str = "end"


@dataclass
class Upstream:
    """An in-process upstream whose answers tests script; it records what it got.

    Each request takes the next script; the last one answers every request after it."""

    url: str
    scripts: list[Script]
    requests: list[dict[str, Any]] = field(default_factory=list)
    closed: list[float] = field(default_factory=list)

    def script(self, *pieces: bytes, **kw: Any) -> Script:
        s = Script(list(pieces), **kw)
        self.scripts.append(s)
        return s


def upstream_app(up: Upstream) -> web.Application:
    """The aiohttp application that plays ``up``'s scripts, on every path."""

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        up.requests.append(
            {
                "method": request.method,
                "path": request.path_qs,
                "headers": dict(request.headers),
                "body": body,
            }
        )
        script = up.scripts.pop(0) if len(up.scripts) > 1 else up.scripts[0]
        if script.delay_headers:
            await asyncio.sleep(script.delay_headers)
        resp = web.StreamResponse(status=script.status, headers=script.headers)
        resp.content_type = script.content_type
        await resp.prepare(request)
        try:
            for piece in script.pieces:
                await resp.write(piece)
                await asyncio.sleep(script.pause)
            if script.ending == "reset":
                assert request.transport is not None
                request.transport.abort()
                return resp
            if script.ending == "hang":
                await asyncio.sleep(3600)
            await resp.write_eof()
        finally:
            up.closed.append(asyncio.get_running_loop().time())
        return resp

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


MakeUpstream = Callable[[], Awaitable[Upstream]]


@pytest.fixture
def make_upstream(aiohttp_server: AiohttpServer) -> MakeUpstream:
    """A new scripted upstream on loopback each call: one more account."""

    async def make() -> Upstream:
        up = Upstream(url="", scripts=[])
        server = await aiohttp_server(upstream_app(up))
        up.url = str(server.make_url("/v1"))
        return up

    return make


@pytest.fixture
async def upstream(make_upstream: MakeUpstream) -> Upstream:
    """One scripted upstream on loopback."""
    return await make_upstream()


def ok(up: Upstream, text: str, stream: bool, **kw: Any) -> None:
    """Script a successful answer of ``text``: a chat stream, or one JSON completion."""
    if stream:
        up.script(*sse_stream(text), **kw)
    else:
        up.script(completion(text), content_type="application/json", **kw)


def fail(up: Upstream, status: int, body: bytes | None = None, **kw: Any) -> None:
    """Script an error answer; by default its body echoes the account's key, as some do."""
    body = body if body is not None else error_body(f"failed {status}: {key_of('A')}")
    up.script(body, status=status, content_type="application/json", **kw)


def play(up: Upstream, scenario: Scenario) -> Script:
    """Script one of the demo's broken upstreams: its bytes, in its small reads."""
    return up.script(*scenario.reads(), content_type=scenario.content_type, pause=0)


def counts(*ups: Upstream) -> list[int]:
    """How many requests each upstream got."""
    return [len(u.requests) for u in ups]


# -- exact bytes over raw connections -------------------------------------------------


class Peer:
    """One connection a :class:`RawUpstream` accepted: requests are read off it, exact
    bytes written to it, and it notes when the client closes it."""

    def __init__(
        self,
        upstream: RawUpstream,
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


class RawUpstream:
    """A loopback HTTP server: every connection it accepts runs ``handler``. It keeps
    each connection (``peers``) and the raw bytes of every request it read."""

    def __init__(self, handler: Handler, host: str = "127.0.0.1") -> None:
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


class StartRawUpstream(Protocol):
    def __call__(self, handler: Handler, host: str = ...) -> Awaitable[RawUpstream]: ...


@pytest.fixture
async def raw_upstream() -> AsyncIterator[StartRawUpstream]:
    """Start a :class:`RawUpstream` running a handler; each is stopped after the test,
    and a handler that failed fails the test."""
    upstreams: list[RawUpstream] = []

    async def start(handler: Handler, host: str = "127.0.0.1") -> RawUpstream:
        up = RawUpstream(handler, host)
        await up.start()
        upstreams.append(up)
        return up

    yield start
    failures = [exc for up in upstreams for exc in await up.stop()]
    if failures:
        raise failures[0]
