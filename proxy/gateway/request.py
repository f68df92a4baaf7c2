"""A client request as seamline's handlers see it, over aiohttp's, and the answers they give.

aiohttp parses the request (``aiohttp.web.Request``) and writes the answers; this is
the one object handlers hold for as long as they run (for a stream, minutes): the
request's path, query and headers, its body read with seamline's limits, and a
stream's writing surface.

It is also the one module where the hot path goes beneath aiohttp's public API: once
a stream's head and first chunk are out through ``StreamResponse.prepare()`` and its
``write``, every further write is a chunk frame (or, for HTTP/1.0, the bytes) written
straight to the transport (``Request.send``: the cost it avoids is named there), the
last chunk too, after which aiohttp is told the body's end went out
(``StreamResponse._eof_sent``); backpressure is the transport's buffer size and the
protocol's writing-paused state, waited on through aiohttp's ``writer.drain()``. Also
beneath the API, for memory: a stream's response keeps its head for its first write
(``_send_headers_immediately``), and what aiohttp keeps for a stream's life but no
longer needs is let go (the request's ``_cache``, an empty body reader's ``_buffer``).
The "aiohttp beneath its public API" tests in ``tests/test_http.py`` pin the bytes on
the wire and aiohttp's state that all this relies on, and ``tests/test_memory.py`` the
memory.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.errors import (
    BadEncoding,
    BodyTooLarge,
    ClientRequestError,
    RequestTimeout,
    UnsupportedEncoding,
)
from proxy.gateway.appstate import App
from proxy.gateway.outcome import Outcome
from proxy.gateway.reply import Reply
from proxy.gateway.serving import SERVER, Unreadable

# What a stream ends with: the last chunk of the chunked coding, no trailer.
LAST_CHUNK = b"0\r\n\r\n"
_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
_IDENTITY = frozenset({"", "identity"})
# Content codings aiohttp's parser inflates by itself (br and zstd only with their
# optional modules, and refused at the head without them); any other reaches a
# handler as it was sent.
_INFLATED = frozenset({"gzip", "deflate", "br", "zstd"})
# What aiohttp refuses in a header (RFC 9110 5.5): control characters but HTAB.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class _StreamResponse(web.StreamResponse):
    """A stream's response, whose head goes out with its first chunk, in one write.

    Beneath aiohttp's API: a StreamResponse sends its head on its own in prepare() (a
    handler may wait long before its first write), one more system call and one more
    wake-up of the client per stream; seamline prepares only to write at once."""

    _send_headers_immediately = False


class Request:
    """One request: its head at once, its body as it arrives, its answer's stream."""

    __slots__ = (
        "_chunked",
        "_expect",
        "_request",
        "_response",
        "_transport",
        "app",
        "ended",
        "headers",
        "method",
        "outcome",
        "path",
        "query_string",
        "raw_path",
    )

    def __init__(self, request: web.Request, app: App) -> None:
        self._request = request
        self.app = app
        url = request.rel_url
        self.method = request.method
        self.path = url.path  # decoded: what routing and the dot-segment check see
        # As the client encoded them: they go upstream so (decoded, an encoded '?' or
        # '/' would change what the upstream is asked for).
        self.raw_path = url.raw_path
        self.query_string = url.raw_query_string
        self.headers = _octets(request.headers)
        self.outcome: Outcome  # set by the dispatcher before any handler runs
        self._expect = request.version >= (1, 1) and "Expect" in self.headers
        self._chunked = request.version >= (1, 1)
        self._response: web.StreamResponse | None = None  # a stream's, once started
        self._transport: asyncio.Transport | None = None
        self.ended = False  # a streamed answer's body has ended

    @property
    def content_length(self) -> int | None:
        return self._request.content_length

    @property
    def body_complete(self) -> bool:
        """The whole body was read off the connection, and could be parsed."""
        content = self._request.content
        return content.is_eof() and content.exception() is None

    @property
    def started(self) -> bool:
        """A streamed answer's head has gone out."""
        return self._response is not None

    async def read(self, limit: int) -> bytes:
        """The whole body, inflated; ``BodyTooLarge`` past ``limit`` bytes (inflated, as
        soon as it is), ``RequestTimeout`` when it arrives too slowly."""
        request = self._request
        if self._expect:
            self._expect = False
            if request.headers.get("Expect", "").lower() == "100-continue":
                # Asked now, not at the head (the routes' expect handler does
                # nothing): a request refused by auth or limits is not uploaded first.
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                request.writer.output_size = 0  # as aiohttp's own expect handler does
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        if encoding not in _IDENTITY and encoding not in _INFLATED:
            raise UnsupportedEncoding(
                f"request Content-Encoding {encoding!r} is not supported: use gzip, deflate or none"
            )
        content = request.content
        parts: list[bytes] = []
        size = 0
        try:
            if content.is_eof():  # the whole body came with the head: no clock needed
                while chunk := content.read_nowait():
                    size += len(chunk)
                    if size > limit:
                        raise _too_large(limit, encoding)
                    parts.append(chunk)
                return _read_whole(content, parts)
            server = self.app.runtime.router.config.server
            loop = asyncio.get_running_loop()
            began = loop.time()
            deadline = began + server.body_timeout_s
            rate, grace = server.body_min_rate, server.body_rate_grace_s
            due = min(deadline, began + grace) if rate else deadline
            try:
                async with asyncio.timeout_at(due) as clock:
                    while chunk := await content.readany():
                        size += len(chunk)
                        if size > limit:
                            raise _too_large(limit, encoding)
                        parts.append(chunk)
                        if rate:
                            # The floor: past the grace, at least ``rate`` bytes a second
                            # on average; each piece buys its own time.
                            due = min(deadline, began + grace + size / rate)
                            clock.reschedule(due)
            except TimeoutError:
                elapsed = loop.time() - began
                raise RequestTimeout(
                    f"request body too slow: {size} bytes in {elapsed:.1f}s"
                    if due < deadline
                    else f"request body not complete within {server.body_timeout_s:g}s"
                ) from None
        except Unreadable as exc:
            raise exc.error from None
        except web.RequestPayloadError as exc:
            # A body the parser could not read: bad chunk framing, or a content coding
            # that does not decode.
            if isinstance(exc.__cause__, ContentEncodingError) or "content-encoding" in str(exc):
                raise BadEncoding(f"request body is not valid {encoding} data") from None
            first = str(exc).split("\n", 1)[0].rstrip(":")
            raise ClientRequestError(f"invalid HTTP request body: {first}") from None
        return _read_whole(content, parts)

    # -- a streamed answer ------------------------------------------------------

    @property
    def chunked_ok(self) -> bool:
        """The client reads chunked bodies (HTTP/1.1); HTTP/1.0 ones end at the close."""
        return self._chunked

    async def start_stream(
        self, status: int, headers: CIMultiDict[str], data: bytes, last: bool = False
    ) -> None:
        """Send the head of a streamed answer together with its first bytes (``last``:
        its only bytes, and its end), through aiohttp.

        The request's own headers are let go: nothing reads them once the answer is
        under way, and a stream can last minutes."""
        response = _StreamResponse(status=status, headers=wire_headers(headers))
        response.headers["Server"] = SERVER
        if self._chunked:
            response.enable_chunked_encoding()
        else:
            # No length and no chunks: the end of the connection ends the body.
            response.force_close()
            response.headers["Connection"] = "close"
        if self.app.gate.draining:
            response.force_close()
        self._response = response
        self.headers = _NO_HEADERS
        # aiohttp's keep-alive timer, armed when the connection opened (or its last
        # answer ended), would be held for the stream's life (about 600 B a stream);
        # this drops it, and aiohttp arms it again once the answer has ended.
        self._request.protocol.keep_alive(True)
        await response.prepare(self._request)
        # The head goes with the first write, in one transport write.
        if last:
            await response.write_eof(data)
            self.ended = True
        else:
            await response.write(data)
        # The head is out: its headers (and the names aiohttp cached from them while
        # writing it, about 900 B a stream) are needed no more; nor is what aiohttp's
        # request cached from its head while it was answered (beneath the API: about
        # 270 B a stream, which it would compute again if asked).
        response.headers.clear()
        self._request._cache.clear()
        self._transport = self._request.transport

    def send(self, data: bytes, last: bool = False) -> int:
        """After ``start_stream``: ``data`` as one write on the client's transport
        (``last``: with the end of the body in the same write); returns the bytes now
        waiting in the transport's buffer. Raises ConnectionResetError once the client
        is gone.

        Beneath aiohttp's API, for two costs: ``StreamResponse.write`` is a coroutine,
        so it could not run inside the upstream socket's callback where pushed reads
        are handled (each read would need a task switch); and it costs about 4 µs more
        per write than this (7.0 against 3.0 µs of process CPU for a 120-byte chunk on
        loopback with uvloop, on the 2-vCPU machine of the README's figures: a quarter
        of what seamline spends per relayed event), for compression, length clipping
        and write signals a stream here never uses."""
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        frame = b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data
        transport.write(frame + self.last_chunk() if last else frame)
        return transport.get_write_buffer_size()

    async def drain(self) -> None:
        """Wait until the client has taken what was written (the transport's high mark:
        aiohttp's protocol is paused for writing until then)."""
        if self._request.transport is None:
            raise ConnectionResetError("the client closed the connection")
        try:
            await self._request.writer.drain()
        except ConnectionError as exc:  # aiohttp's "Connection lost" is a plain one
            raise ConnectionResetError(str(exc)) from None

    def last_chunk(self) -> bytes:
        """The bytes that end a streamed body (none for HTTP/1.0), once; the caller
        writes them. aiohttp is told the end went out, so that it does not write a
        second one when the handler returns."""
        end = LAST_CHUNK if self._chunked and not self.ended else b""
        self.ended = True
        if self._response is not None:
            self._response._eof_sent = True  # beneath the API: see the module's docstring
        return end

    def end_stream(self) -> None:
        """End a streamed body, unless its last write did."""
        end = self.last_chunk()
        transport = self._transport
        if end and transport is not None and not transport.is_closing():
            transport.write(end)

    def answer(self, reply: Reply) -> web.StreamResponse:
        """The aiohttp response for ``reply``: a whole one, or the stream already sent.

        A whole answer closes its connection while draining, and when the body was not
        read to its end (a 401, a 413 before it arrived): the connection cannot carry
        another request. A stream that did not end (its client left, or its handler
        failed) is left cut, its connection closed: aiohttp must not end it as if it
        were whole."""
        response = self._response
        if response is None:
            response = web.Response(
                status=reply.status, body=reply.body, headers=wire_headers(reply.headers)
            )
            response.headers["Server"] = SERVER
            if self.app.gate.draining or not self.body_complete:
                response.force_close()
        elif not self.ended:
            self.ended = True
            response._eof_sent = True  # beneath the API: no last chunk from aiohttp
            response.force_close()
        return response


Handler = Callable[[Request], Awaitable[Reply]]


def _read_whole(content: StreamReader, parts: list[bytes]) -> bytes:
    """The body read to its end from ``content``, which lets go of its empty buffer.

    Beneath aiohttp's API: the reader is held for as long as the request is served (a
    stream's life), and its buffer is a deque, whose first block alone is about 700 B;
    once the body is read an empty tuple reads the same (nothing is fed any more)."""
    if content is not EMPTY_PAYLOAD and content.at_eof():
        content._buffer = ()  # type: ignore[assignment]
    return b"".join(parts)


def _too_large(limit: int, encoding: str) -> BodyTooLarge:
    inflated = "" if encoding in _IDENTITY else " once inflated"
    return BodyTooLarge(f"request body exceeds {limit} bytes{inflated}")


def _octets(headers: CIMultiDictProxy[str]) -> CIMultiDictProxy[str]:
    """The request's headers, each value standing for the client's bytes as latin-1
    (wire.py writes header values upstream as latin-1, so every byte goes on as
    itself). aiohttp decodes them as UTF-8; only a head with other bytes than ASCII
    is copied."""
    for value in headers.values():
        if not value.isascii():
            return CIMultiDictProxy(
                CIMultiDict(
                    (k, v.encode("utf-8", "surrogateescape").decode("latin-1"))
                    for k, v in headers.items()
                )
            )
    return headers


def wire_headers(headers: CIMultiDict[str]) -> CIMultiDict[str]:
    """``headers`` as aiohttp writes them out (UTF-8, control characters refused with
    a ValueError): a value read as latin-1 from the upstream (wire.py) goes back out as
    the same bytes when they are UTF-8; a value that would not (or that holds a
    control character) is left out, never mangled and never a split head."""
    for value in headers.values():
        if not (value.isascii() and value.isprintable()):
            break
    else:
        return headers  # the common case: nothing to change
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        if not value.isascii():
            try:
                value = value.encode("latin-1").decode("utf-8")
            except UnicodeError:
                continue
        if not _CONTROL.search(value):
            out.add(name, value)
    return out
