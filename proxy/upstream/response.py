"""One upstream answer as its reader sees it: status and headers, then the body,
pulled (``await read()``) or pushed (each piece handed from the socket's callback to a
sink, no task switch). ``conn.Conn`` feeds it.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable
from typing import Any, Protocol

from multidict import CIMultiDict, CIMultiDictProxy

from proxy.errors import UpstreamError, UpstreamProtocolError

# Pulled bodies: past this many bytes buffered and unread, stop reading the socket.
_HIGH_WATER = 0x20000
# A compressed body is inflated this many bytes at a time: a 64 KiB read of gzip can
# inflate to 64 MiB, which must not become one piece (or one buffer).
_INFLATE_STEP = 0x10000
_GRACE = 1.0  # seconds a let-go body has to end for its connection to be kept

NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


class Link(Protocol):
    """What an answer needs of the connection feeding it."""

    body: Callable[[bytes], None]

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def abort(self) -> None: ...


class Response:
    """One upstream answer: status and headers, then the body, pulled or pushed."""

    __slots__ = (
        "_conn",
        "_decoder",
        "_draining",
        "_ended",
        "_exc",
        "_finishing",
        "_head",
        "_held",
        "_loop",
        "_paused",
        "_pieces",
        "_pushed",
        "_sink",
        "_size",
        "_stash",
        "_timer",
        "_waiter",
        "content_type",
        "headers",
        "status",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._head: asyncio.Future[None] = loop.create_future()
        self._conn: Link | None = None
        self._pieces: list[bytes] = []  # a deque's first block alone is 600 bytes
        self._size = 0
        self._waiter: asyncio.Future[None] | None = None
        self._ended = False  # the body is complete
        self._draining = False  # the reader let go; the rest is read and dropped
        self._exc: UpstreamError | None = None
        self._sink: Callable[[bytes], None] | None = None
        self._pushed: asyncio.Future[bool] | None = None
        self._paused = False  # the connection is paused because ``_pieces`` is full
        self._held = False  # the pushed body's reader asked for a pause
        self._decoder: Any = None
        # Compressed bytes (or none: output zlib still holds) to inflate once the reader
        # catches up; None: nothing is waiting.
        self._stash: bytearray | None = None
        self._finishing = False  # the body is all in, the stash still to inflate
        self._timer: asyncio.TimerHandle | None = None
        self.status = 0
        self.headers: CIMultiDictProxy[str] = NO_HEADERS
        self.content_type = "application/octet-stream"

    # -- the reader's side --------------------------------------------------------

    async def read(self) -> bytes:
        """Whatever body bytes have arrived (waiting for some), b"" at the end."""
        while True:
            if not self._pieces and self._stash is not None:
                self._catch_up()
            if self._pieces:
                data = b"".join(self._pieces) if len(self._pieces) > 1 else self._pieces[0]
                self._pieces.clear()
                self._size = 0
                if self._paused and self._stash is None:
                    self._paused = False
                    if self._conn is not None:
                        self._conn.resume()
                return data
            if self._exc is not None:
                raise self._exc
            if self._ended:
                return b""
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def buffered(self) -> bool:
        return bool(self._pieces) or self._stash is not None

    def push(self, sink: Callable[[bytes], None]) -> asyncio.Future[bool]:
        """From now on hand each piece of the body to ``sink`` as it arrives, inside the
        socket's callback: no task switch per piece. ``sink`` must not raise; it ends
        the push itself, with ``stop()`` or ``interrupt()``. Resolves True at the body's
        end, False once stopped, or with the error that broke it. Call only with
        nothing ``buffered()``."""
        done: asyncio.Future[bool] = self._loop.create_future()
        self._pushed = done
        if self._exc is not None:
            done.set_exception(self._exc)
        elif self._ended:
            done.set_result(True)
        else:
            self._sink = sink
            if self._decoder is None and self._conn is not None:
                self._conn.body = sink  # straight from the parser
        return done

    def stop(self) -> None:
        """End a push early: the reader wants no more of the body."""
        done = self._pushed
        if done is not None and not done.done():
            done.set_result(False)
        self.let_finish()

    def let_finish(self) -> None:
        """The reader wants no more of the body: drop the rest as it arrives, and keep
        the connection if the body ends within a moment (after a [DONE] only the
        chunked encoding's last chunk is still to come), else close it."""
        conn = self._conn
        self._sink = None
        if conn is None or self._ended or self._exc is not None or self._draining:
            self.close()
            return
        self._draining = True
        self._decoder = None
        self._stash = None
        self._finishing = False
        self._pieces.clear()
        conn.body = _ignore
        conn.resume()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(_GRACE, self._give_up)

    def _give_up(self) -> None:
        self._timer = None
        self._draining = False
        self.close()

    def interrupt(self, exc: BaseException) -> None:
        """End a push with ``exc``, a failure on the reader's side (its client left)."""
        done = self._pushed
        if done is not None and not done.done():
            done.set_exception(exc)
        self.close()

    def pause(self) -> None:
        """Stop reading the socket (the reader's client is not keeping up)."""
        self._held = True
        if self._conn is not None:
            self._conn.pause()

    def resume(self) -> None:
        self._held = False
        if self._stash is not None:
            self._catch_up()
            if self._stash is not None:
                return  # the reader is behind again
        if self._conn is not None:
            self._conn.resume()

    def fail(self, exc: UpstreamError) -> None:
        """End the answer with ``exc``: ``request`` raises it if the headers are still
        to come (a ``total`` shorter than ``head``), else a pending or later read."""
        self._broken(exc)

    def close(self) -> None:
        """Done with this answer. A connection with any of it left unread is closed;
        one read to its end is back in the pool already."""
        if self._draining:
            return  # ``let_finish`` decides
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._sink = None
        self._decoder = None
        self._stash = None
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.abort()

    # -- the connection's side ----------------------------------------------------

    def _wake(self) -> None:
        done = self._pushed
        if done is not None and not done.done():
            if self._exc is not None:
                done.set_exception(self._exc)
            else:
                done.set_result(True)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _piece(self, data: bytes) -> None:
        if self._decoder is not None:
            if self._stash is not None:
                self._stash += data  # behind already: in order, after the rest
            else:
                self._inflate(data)
            return
        self._deliver(data)

    def _inflate(self, data: bytes | bytearray) -> None:
        """Inflate ``data`` a step at a time, each step handed on as a body piece; once
        the reader is behind, keep the rest (and stop reading the socket) until it
        catches up. Bodies that are not compressed never come here."""
        while True:
            decoder = self._decoder
            if decoder is None:
                return  # the reader let go
            try:
                out = decoder.decompress(data, _INFLATE_STEP)
            except zlib.error as exc:
                self._broken(
                    UpstreamProtocolError(f"upstream sent a corrupt compressed body: {exc}")
                )
                return
            data = decoder.unconsumed_tail
            if out:
                self._deliver(out)
            if not data and len(out) < _INFLATE_STEP:
                return  # a full step may leave output inside zlib: one more round
            if self._exc is not None:
                return
            if self._held or self._size > _HIGH_WATER:
                self._stash = bytearray(data)
                if self._conn is not None:
                    self._conn.pause()
                return

    def _catch_up(self) -> None:
        data, self._stash = self._stash, None
        if data is not None:
            self._inflate(data)
        if self._stash is None and self._finishing:
            self._finishing = False
            self._complete()

    def _deliver(self, data: bytes) -> None:
        sink = self._sink
        if sink is not None:
            sink(data)
            return
        if self._exc is not None or self._ended:
            return
        self._pieces.append(data)
        self._size += len(data)
        if self._size > _HIGH_WATER and not self._paused and self._conn is not None:
            self._paused = True
            self._conn.pause()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _complete(self) -> None:
        if self._stash is not None:
            # All of the body is in, not all of it inflated: it ends once it is. The
            # connection is free for the next request already.
            self._finishing = True
            self._conn = None
            return
        if self._decoder is not None:
            tail = self._decoder.flush()
            self._decoder = None
            if tail:
                self._deliver(tail)
        self._ended = True
        self._draining = False
        self._conn = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wake()

    def _broken(self, exc: UpstreamError) -> None:
        if self._ended or self._exc is not None:
            return
        self._exc = exc
        self._draining = False
        if not self._head.done():
            self._head.set_exception(exc)
            self._head.exception()  # a failure before the headers is raised by send
        self._wake()
        self.close()


def _ignore(data: bytes) -> None:
    return None
