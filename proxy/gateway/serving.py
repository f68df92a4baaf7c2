"""aiohttp's HTTP server as seamline runs it: its limits, and its refusals in OpenAI format.

aiohttp parses every request (llhttp, through its C extension) and refuses what it
cannot parse itself, with a plain-text answer, before any handler runs. The one hook
for those answers is ``RequestHandler.handle_error``; ``Protocol`` overrides it, and
``AppRunner`` makes aiohttp's server build a ``Protocol`` for each connection (through
``web.Server.__call__`` and ``AppRunner._make_server``). ``Protocol`` also reads
aiohttp's queue of parsed requests (``_messages``, ``_ErrInfo``) to fail a body the
parser refused partway, and keeps that queue in a list. All of it is beneath aiohttp's
public API: the malformed-request, limit and trailer tests in ``tests/test_http.py``
fail if an upgrade changes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError, HttpProcessingError, LineTooLong
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import _ErrInfo

from proxy.errors import SeamlineError, UnsupportedEncoding
from proxy.logs import get_logger

# What every answer names as its server: not aiohttp's default, which tells a peer the
# aiohttp and Python versions (and so which of their known flaws to try).
SERVER = "seamline"

log = get_logger("seamline")

# The parser's limits. The URL and a header field have limits of their own sizes so that
# a LineTooLong says which one was passed (aiohttp raises the same error for both).
MAX_URL = 8190
MAX_FIELD = 16384  # a header's value (and its name): room for big tokens and cookies
MAX_HEADERS = 128
# After an answer given before the body was read (401, 413): how long the rest of the
# body is still read and dropped, so that the client reads the answer rather than a
# reset; then the connection closes. aiohttp's default is 10 s.
LINGER_S = 1.0


def refusal(status: int, exc: BaseException | None) -> SeamlineError:
    """What seamline answers to a request aiohttp could not parse (or, status 500/504,
    to a failure beneath the dispatch)."""
    if isinstance(exc, LineTooLong):
        limit = exc.args[1] if len(exc.args) > 1 else None
        if limit == MAX_URL:
            return _error(414, f"request URL exceeds {MAX_URL} bytes")
        return _error(431, f"request header field exceeds {MAX_FIELD} bytes")
    if isinstance(exc, HttpProcessingError):
        if exc.message == "Too many headers received":
            return _error(431, f"request has more than {MAX_HEADERS} header fields")
        if isinstance(exc, ContentEncodingError):
            # At the head: a coding aiohttp knows but cannot decode here (br, zstd).
            return UnsupportedEncoding(
                "request Content-Encoding is not supported: use gzip, deflate or none"
            )
        first = (exc.message or "").split("\n", 1)[0].rstrip(":")
        return _error(400, f"invalid HTTP request: {first}")
    if status < 500:
        return _error(status, f"invalid HTTP request: {exc or status}")
    err = SeamlineError("internal error" if status == 500 else "timed out")
    err.status = status
    return err


def _error(status: int, message: str) -> SeamlineError:
    err = SeamlineError(message)
    err.status = status
    err.error_type = "invalid_request_error"
    return err


class Unreadable(web.RequestPayloadError):
    """A body the parser refused partway; ``error`` is what its request is answered."""

    def __init__(self, error: SeamlineError) -> None:
        super().__init__(error.message)
        self.error = error


class _Queue(list[tuple[RawRequestMessage | _ErrInfo, StreamReader]]):
    """The few methods of a deque aiohttp uses on its queue of parsed requests: a
    deque's first block alone is about 700 B, held by every connection, idle or not,
    for a queue that holds one request, or at most 32 pipelined ones."""

    __slots__ = ()

    def popleft(self) -> tuple[RawRequestMessage | _ErrInfo, StreamReader]:
        return self.pop(0)


class Protocol(web.RequestHandler):
    """aiohttp's connection protocol, with its error answers in OpenAI format."""

    __slots__ = ("_reading",)

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._messages = _Queue()  # type: ignore[assignment]  # see _Queue
        # aiohttp reads both addresses of the connection for every request it makes (two
        # system calls, and about 300 B a connection held while it lasts); seamline
        # uses neither (its log lines name no address): known as unknown.
        self._cache.update(peername=None, sockname=None)
        # The body the parser feeds: that of the last request it queued.
        self._reading: StreamReader = EMPTY_PAYLOAD

    def data_received(self, data: bytes) -> None:
        queue = cast(_Queue, self._messages)
        queued = len(queue)
        super().data_received(data)
        for message, payload in queue[queued:]:
            if not isinstance(message, _ErrInfo):
                self._reading = payload
                continue
            # Nothing after bytes the parser refused is read: llhttp stays failed,
            # and would queue a vaguer error ("Span callback error") for each read.
            self.close()
            body = self._reading
            if body is not EMPTY_PAYLOAD and not body.is_eof():
                # Refused in the middle of a body (bad chunk framing, a trailer past
                # its limit): aiohttp would answer the error as one more request, and
                # the handler reading that body would wait for the rest until its
                # deadline. The body's reader gets the error instead, and its handler
                # answers it.
                queue.remove((message, payload))
                body.set_exception(Unreadable(refusal(message.status, message.exc)))
                body.feed_eof()
            return

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            # Part of an answer went out: nothing more can be said on this connection.
            raise ConnectionError("an answer was already under way")
        err = refusal(status, exc)
        if err.status >= 500:
            log.error("server_error", status=err.status, exc_info=exc)
        return _closing(err)


def _closing(err: SeamlineError) -> web.Response:
    """``err`` as the last answer on its connection."""
    response = web.Response(
        status=err.status,
        body=err.json_bytes(),
        content_type="application/json",
        headers={"Connection": "close", "Server": SERVER},
    )
    response.force_close()
    return response


_Handle = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def _origin_form(handle: _Handle, request: web.BaseRequest) -> Awaitable[web.StreamResponse]:
    """``handle``'s answer, for a request whose target is a path. Not a coroutine: for
    those it hands over ``handle``'s, so that an open stream holds one frame less.

    A CONNECT's target (``host:port``) and ``OPTIONS *`` match no route, not even the
    catch-all one: aiohttp would answer them in plain text."""
    if request.rel_url.path.startswith("/"):
        return handle(request)
    return _not_a_path()


async def _not_a_path() -> web.StreamResponse:
    return _closing(_error(400, "invalid HTTP request: seamline serves paths under /v1"))


class _Server(web.Server):
    """aiohttp's server, making a ``Protocol`` for each connection."""

    def __init__(self, handler: _Handle, **kw: Any) -> None:
        super().__init__(partial(_origin_form, handler), **kw)

    def __call__(self) -> web.RequestHandler:
        return Protocol(self, loop=self._loop, **self._kwargs)


class AppRunner(web.AppRunner):
    """``web.AppRunner`` whose server speaks ``Protocol``; keyword arguments go to each
    connection's protocol as with aiohttp's own."""

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        return _Server(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **made._kwargs,
        )


def runner(app: web.Application, keepalive: float, **kw: Any) -> AppRunner:
    """The runner for ``app``: the client that leaves cancels its handler, no access
    log (seamline writes its own summary line), the parser's limits above."""
    return AppRunner(
        app,
        handler_cancellation=True,
        access_log=None,
        # SO_KEEPALIVE's probes start after two idle hours (Linux's default): never,
        # here, where an idle connection closes after keepalive_s and a silent stream
        # sends heartbeats (heartbeat_s). Off, it is a system call less per connection.
        tcp_keepalive=False,
        keepalive_timeout=keepalive,
        max_line_size=MAX_URL,
        max_field_size=MAX_FIELD,
        max_headers=MAX_HEADERS,
        lingering_time=LINGER_S,
        **kw,
    )
