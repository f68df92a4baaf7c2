"""One client request as seamline's handlers see it, and the answers they give.

The connection that parses it and writes the answers is ``server.Connection``; a
``Request`` is what the handler holds for as long as it runs (for a stream, minutes), so
it keeps little and lets go of its headers once the answer is under way.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING
from urllib.parse import unquote

from multidict import CIMultiDict, CIMultiDictProxy

from .errors import (
    BadEncoding,
    BodyTooLarge,
    ClientRequestError,
    RequestTimeout,
    UnsupportedEncoding,
)
from .outcome import Outcome

if TYPE_CHECKING:
    from .server import Connection


class Reply:
    """A whole answer: status, headers, body."""

    __slots__ = ("body", "headers", "status")

    prepared = False  # a streamed answer went out already; see ``Streamed``

    def __init__(
        self,
        status: int = 200,
        body: bytes = b"",
        headers: CIMultiDict[str] | dict[str, str] | None = None,
        content_type: str | None = None,
    ) -> None:
        self.status = status
        self.body = body
        # A multidict passed in is the caller's to give away: not copied.
        self.headers: CIMultiDict[str] = (
            headers if isinstance(headers, CIMultiDict) else CIMultiDict(headers or ())
        )
        if content_type is not None:
            self.headers["Content-Type"] = content_type

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()


class Streamed(Reply):
    """An answer the handler already sent, head and body, through the request."""

    __slots__ = ()

    prepared = True


class Request:
    """One request: its head at once, its body as it arrives."""

    __slots__ = (
        "_body",
        "_conn",
        "_expect",
        "_size",
        "_waiter",
        "app",
        "bad",
        "complete",
        "ended",
        "headers",
        "keep_alive",
        "limit",
        "method",
        "outcome",
        "path",
        "query_string",
        "raw_path",
        "started",
        "too_large",
        "version",
    )

    def __init__(
        self,
        conn: Connection,
        method: str,
        raw_path: str,
        query_string: str,
        headers: CIMultiDictProxy[str],
        version: str,
        keep_alive: bool,
        limit: int,
    ) -> None:
        self._conn = conn
        self.app = conn.server.app
        self.method = method
        self.raw_path = raw_path
        self.path = unquote(raw_path)
        self.query_string = query_string
        self.headers = headers
        self.version = version
        self.keep_alive = keep_alive
        self.limit = limit
        self.outcome: Outcome  # set by the dispatcher before any handler runs
        self.complete = False
        self.too_large = False
        self.bad: str | None = None  # why the rest of its body could not be parsed
        self.started = False  # the answer's head has gone out
        self.ended = False  # a streamed answer's body has ended
        self._body: list[bytes] = []
        self._size = 0
        self._waiter: asyncio.Future[None] | None = None
        self._expect = headers.get("Expect", "").lower() == "100-continue"

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return int(value) if value is not None and value.isdigit() else None

    @property
    def chunked_ok(self) -> bool:
        """The client reads chunked bodies (HTTP/1.1); HTTP/1.0 ones end at the close."""
        return self.version != "1.0"

    async def read(self, limit: int) -> bytes:
        """The whole body; ``BodyTooLarge`` past ``limit`` bytes, as soon as it is."""
        limit = min(limit, self.limit)
        if self._expect:
            self._expect = False
            if not self.complete and not self._conn.closed:
                # Asked now, not at the head: a refused request is not uploaded first.
                self._conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        while not self.complete and not self.too_large and self._size <= limit:
            if self.bad is not None:
                raise ClientRequestError(self.bad)
            if self._conn.closed:
                raise ConnectionResetError("the client closed the connection")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                # A body that stops arriving holds its connection no longer than an
                # idle one.
                async with asyncio.timeout(self._conn.server.keepalive):
                    await self._waiter
            except TimeoutError:
                raise RequestTimeout(
                    f"request body stalled: nothing of it arrived for "
                    f"{self._conn.server.keepalive:g}s"
                ) from None
            finally:
                self._waiter = None
        if self.too_large or self._size > limit:
            raise BodyTooLarge(f"request body exceeds {limit} bytes")
        body, self._body = b"".join(self._body), []
        encoding = self.headers.get("Content-Encoding", "").strip().lower()
        return _inflate(body, encoding, limit) if encoding not in ("", "identity") else body

    def _piece(self, data: bytes) -> None:
        if self.too_large:
            return
        self._size += len(data)
        if self._size > self.limit:
            # Kept no further: the handler answers 413 and the connection closes.
            self.too_large = True
            self._body = []
        else:
            self._body.append(data)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- a streamed answer ------------------------------------------------------

    def start_stream(
        self, status: int, headers: CIMultiDict[str], data: bytes, last: bool = False
    ) -> None:
        """Send the head of a streamed answer together with its first bytes (``last``:
        its only bytes, and its end).

        The request's own headers are let go: nothing reads them once the answer is
        under way, and a stream can last minutes."""
        self.started = True
        self.headers = _NO_HEADERS
        self._conn.idle_parser()
        if self.chunked_ok:
            data = b"%x\r\n%b\r\n" % (len(data), data) if data else b""
            if last:
                data += self.last_chunk()
        else:
            # No length and no chunks: the end of the connection ends the body.
            self.keep_alive = False
        self._conn.write(self._conn.head(self, status, headers, None) + data)

    @property
    def transport(self) -> asyncio.Transport:
        return self._conn.transport

    async def drain(self) -> None:
        """Wait until the client has taken what was written (the transport's high mark)."""
        await self._conn.drain()

    def last_chunk(self) -> bytes:
        """The bytes that end a streamed body (none for HTTP/1.0), once."""
        if self.ended or not self.chunked_ok:
            self.ended = True
            return b""
        self.ended = True
        return b"0\r\n\r\n"

    def end_stream(self) -> None:
        """End a streamed body, unless its last write did."""
        end = self.last_chunk()
        if end:
            self._conn.write(end)


Handler = Callable[[Request], Awaitable[Reply]]
_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


def _inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """A gzip or deflate body inflated, refused past ``limit`` bytes (a small body can
    inflate to gigabytes)."""
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise UnsupportedEncoding(
            f"request Content-Encoding {encoding!r} is not supported: use gzip, deflate or none"
        )
    # 47: a zlib or gzip header, told apart by the data; -15: raw deflate, which some
    # clients send as "deflate".
    for wbits in (47, -15):
        inflater = zlib.decompressobj(wbits)
        try:
            out = inflater.decompress(body, limit + 1)
        except zlib.error:
            continue
        if len(out) > limit or inflater.unconsumed_tail:
            raise BodyTooLarge(f"request body exceeds {limit} bytes once inflated")
        if inflater.eof:
            return out
    raise BadEncoding(f"request body is not valid {encoding} data")
