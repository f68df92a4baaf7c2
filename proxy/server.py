"""seamline's HTTP/1.1 server: httptools (llhttp) parsing, keep-alive, a task per request.

Why not aiohttp's server: an open stream is mostly waiting, and what it holds while it
waits is its cost. aiohttp keeps a request, its message, a payload reader, a writer and
two tasks per connection (about 10 KiB); this keeps a parser, a small request and one
task. The handler gets a ``request.Request`` and returns a ``request.Reply``, or streams
its answer itself (``Request.start_stream``, then the transport, then ``end_stream``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from .errors import SeamlineError
from .request import Handler, Reply, Request

if TYPE_CHECKING:
    from .app import App

# Past these a request is refused: llhttp itself has no limit on a head's size.
MAX_URL = 8190
MAX_HEAD = 65536
MAX_HEADERS = 128
KEEPALIVE_S = 75.0  # idle time allowed between requests, and for a head to arrive

_REASONS = {s.value: s.phrase for s in HTTPStatus}
_NO_BODY = frozenset({204, 304})


class _Refused(Exception):
    """A request refused while its head is parsed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Connection(asyncio.Protocol):
    """One client connection: requests parsed in order, answered one at a time."""

    __slots__ = (
        "_drain",
        "_head_size",
        "_headers",
        "_in_head",
        "_last",
        "_parsing",
        "_paused",
        "_queue",
        "_raw_left",
        "_task",
        "_timer",
        "_url",
        "closed",
        "parser",
        "server",
        "transport",
    )

    def __init__(self, server: Server) -> None:
        self.server = server
        # Made when a request's first bytes arrive, and let go while a stream is
        # relayed: an open stream should hold as little as it can.
        self.parser: httptools.HttpRequestParser | None = None
        self.transport: asyncio.Transport = cast(asyncio.Transport, None)
        self.closed = False
        self._last = False  # no request after the current ones (an upgrade was asked)
        # Body bytes still to come of a request that asked for an upgrade: llhttp ends
        # such a request at its head, so its body is taken here, past the parser.
        self._raw_left = 0
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._in_head = False
        self._head_size = 0
        self._parsing: Request | None = None  # the request whose bytes are arriving
        self._queue: list[Request] = []  # pipelined requests waiting for their turn
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._drain: asyncio.Future[None] | None = None
        self._paused = False

    # -- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections.add(self)
        self._idle()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if self._raw_left:
            self._raw_body(data)
            return
        if self._last:
            return
        parser = self.parser
        if parser is None:
            parser = self.parser = httptools.HttpRequestParser(self)
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # An upgrade (h2c, websocket) is not taken: the request is answered as
            # HTTP/1.1 (RFC 9110 7.8 lets a server ignore it), its body is still read,
            # and nothing after it is.
            self._last = True
            rest = data[exc.args[0] :]
            if self._raw_left and rest:
                self._raw_body(rest)
            return
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, _Refused):
                self._refuse(cause.status, str(cause))
            else:
                self._refuse(400, f"invalid HTTP request: {exc}")
            return
        if self._in_head:
            # ``on_header`` sees a field only once it ends: a head that keeps growing
            # without ending is refused here.
            self._head_size += len(data)
            if self._head_size > MAX_HEAD + MAX_URL:
                self._refuse(431, f"request head exceeds {MAX_HEAD} bytes")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(ConnectionResetError("the client closed the connection"))
        for req in (self._parsing, *self._queue):
            if req is not None:
                req._wake()
        if self._task is not None and not self._task.done():
            # The client is gone: the handler stops at once (a silent upstream would
            # otherwise hold it until its next byte).
            self._task.cancel()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # -- httptools callbacks ----------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._head_size = 0
        self._in_head = True

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_URL:
            raise _Refused(414, f"request URL exceeds {MAX_URL} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        if len(self._headers) > MAX_HEADERS:
            raise _Refused(431, f"request has more than {MAX_HEADERS} header fields")

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._timer is not None:
            # Kept from the first byte of the head to its end: a head sent a byte at
            # a time holds a connection no longer than an idle one.
            self._timer.cancel()
            self._timer = None
        if sum(len(n) + len(v) for n, v in self._headers) > MAX_HEAD:
            # A head that arrived whole in one read was never counted by data_received.
            raise _Refused(431, f"request head exceeds {MAX_HEAD} bytes")
        try:
            url = httptools.parse_url(self._url)
        except httptools.HttpParserInvalidURLError:
            raise _Refused(400, "invalid request URL") from None
        parser = self.parser
        assert parser is not None
        headers = CIMultiDictProxy(
            CIMultiDict(
                # Latin-1: every byte stays itself on the way upstream (wire.py writes
                # header values as latin-1).
                (n.decode("latin-1"), v.decode("latin-1"))
                for n, v in self._headers
            )
        )
        self._headers = []
        req = Request(
            self,
            parser.get_method().decode("ascii", "replace"),
            (url.path or b"/").decode("utf-8", "surrogateescape"),
            (url.query or b"").decode("utf-8", "surrogateescape"),
            headers,
            parser.get_http_version(),
            parser.should_keep_alive(),
            self.server.body_limit(),
        )
        self._url = b""
        self._head_size = 0
        self._parsing = req
        if parser.should_upgrade():
            if "chunked" in headers.get("Transfer-Encoding", "").lower():
                raise _Refused(400, "a chunked request body with Upgrade is not supported")
            self._raw_left = req.content_length or 0
        if self._task is None:
            self._start(req)
        else:
            # Pipelined: answered in order, once the one before is. Reading stops
            # meanwhile, so a pipelining client cannot queue without bound.
            self._queue.append(req)
            self.transport.pause_reading()

    def on_body(self, body: bytes) -> None:
        if self._parsing is not None:
            self._parsing._piece(body)

    def on_message_complete(self) -> None:
        if not self._raw_left:
            self._complete()

    def _complete(self) -> None:
        req, self._parsing = self._parsing, None
        if req is not None:
            req.complete = True
            req._wake()

    def _raw_body(self, data: bytes) -> None:
        """Body bytes of an upgrade request, counted by its Content-Length."""
        req = self._parsing
        take = data[: self._raw_left]
        self._raw_left -= len(take)
        if req is None:
            return
        req._piece(take)
        if not self._raw_left:
            self._complete()

    # -- answering --------------------------------------------------------------

    def _start(self, req: Request) -> None:
        self._task = asyncio.get_running_loop().create_task(self._answer(req))

    async def _answer(self, req: Request) -> None:
        try:
            reply = await self.server.handler(req)
        except asyncio.CancelledError:
            self._close()
            raise
        except Exception:
            # The handler answers every error it knows; this is a bug, and the
            # client must still not wait for an answer that will never come.
            self.server.log_error("unhandled_error", req)
            reply = None
        if reply is None or (req.started and not reply.prepared):
            self._close()
            return
        if self.closed or self.transport.is_closing():
            return  # nobody to answer; connection_lost has seen to the rest
        if not reply.prepared:
            if not req.complete:
                # Answered before the body arrived (401, 413): the rest of it is
                # not read, so the connection cannot carry another request.
                req.keep_alive = False
            self.write(self.reply_bytes(req, reply))
        self._next(req)

    def _next(self, done: Request) -> None:
        self._task = None
        if self.closed:
            return
        if not done.keep_alive or not done.complete or (self._last and not self._queue):
            self._close()
            return
        if self._queue:
            req = self._queue.pop(0)
            if not self._queue:
                self.transport.resume_reading()
            self._start(req)
        elif self._parsing is None:
            self._idle()

    def reply_bytes(self, req: Request, reply: Reply) -> bytes:
        body = reply.body
        if reply.status in _NO_BODY:
            body = b""
        head = self.head(req, reply.status, reply.headers, len(body))
        return head if req.method == "HEAD" else head + body

    def head(
        self, req: Request, status: int, headers: CIMultiDict[str], length: int | None
    ) -> bytes:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
        for name, value in headers.items():
            if name.lower() in ("content-length", "transfer-encoding", "connection", "date"):
                continue
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                continue  # never a header that would split the head
            lines.append(f"{name}: {value}")
        if length is None and req.chunked_ok:
            lines.append("Transfer-Encoding: chunked")
        if length is not None and status not in _NO_BODY:
            lines.append(f"Content-Length: {length}")
        lines.append(f"Date: {http_date()}")
        if not req.keep_alive or self.server.closing or (self._last and not self._queue):
            req.keep_alive = False
            lines.append("Connection: close")
        elif req.version == "1.0":
            lines.append("Connection: keep-alive")
        # Latin-1: the upstream's header bytes were read as latin-1 (wire.py), and go
        # back out as the same bytes; seamline's own headers are ASCII.
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")

    def write(self, data: bytes) -> None:
        if self.closed or self.transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        self.transport.write(data)

    async def drain(self) -> None:
        if self.closed:
            raise ConnectionResetError("the client closed the connection")
        if not self._paused:
            return
        if self._drain is None or self._drain.done():
            self._drain = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._drain)

    def _refuse(self, status: int, message: str) -> None:
        """Answer a request that could not be parsed, and close."""
        if self._task is not None and not self.closed:
            # Bad bytes while a request is answered: nothing more is read. Requests
            # queued before them are answered, the last one with "Connection: close";
            # one whose own body they are is refused by its ``read``.
            self._last = True
            req, self._parsing = self._parsing, None
            if req in self._queue:
                self._queue.remove(req)
            elif req is not None:
                req.bad = message
                req._wake()
            return
        if not self.closed:
            err = SeamlineError(message)
            err.status = status
            err.error_type = "invalid_request_error"
            body = err.json_bytes()
            head = (
                f"HTTP/1.1 {status} {_REASONS.get(status, 'Bad Request')}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                f"Date: {http_date()}\r\nConnection: close\r\n\r\n"
            ).encode()
            self.transport.write(head + body)
        self._close()

    def _idle(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(self.server.keepalive, self._close)

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()

    def idle_parser(self) -> None:
        """Let the parser go while no request is arriving (one is made again for the
        next request's first bytes)."""
        if self._parsing is None and not self._in_head:
            self.parser = None

    def busy(self) -> bool:
        return self._task is not None


class Server:
    """Listening sockets and their connections; ``handler`` answers each request."""

    def __init__(
        self,
        app: App,
        handler: Handler,
        body_limit: Callable[[], int],
        log_error: Callable[[str, Request], None],
        keepalive: float = KEEPALIVE_S,
    ) -> None:
        self.app = app
        self.keepalive = keepalive
        self.handler = handler
        self.body_limit = body_limit
        self.log_error = log_error
        self.connections: set[Connection] = set()
        self.closing = False
        self._servers: list[asyncio.Server] = []

    async def listen(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(
            lambda: Connection(self), host, port, reuse_address=True, backlog=1024
        )
        self._servers.append(srv)

    @property
    def addresses(self) -> list[Any]:
        return [s.getsockname() for srv in self._servers for s in srv.sockets]

    async def stop_listening(self) -> None:
        for srv in self._servers:
            srv.close()
        # Open connections stay, so that a load balancer's probe on one still hears
        # "draining"; each answer from now on closes its connection.
        self.closing = True

    async def shutdown(self, grace: float) -> None:
        """Stop listening, give handlers ``grace`` seconds, then cancel them."""
        await self.stop_listening()
        tasks = [c._task for c in self.connections if c._task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        for conn in list(self.connections):
            task = conn._task
            conn._close()
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        for srv in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(srv.wait_closed(), 1)
        self._servers.clear()


_date: tuple[int, str] = (0, "")


def http_date() -> str:
    """The Date header's value, made once a second."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, formatdate(now, usegmt=True))
    return _date[1]
