"""One keep-alive connection to an upstream: HTTP/1.1's rules and flow control,
written once, on httptools. It feeds its answer (``response.Response``); :mod:`.wire`
owns the pool these connections live in and the requests that use them.
"""

from __future__ import annotations

import asyncio
import select
import zlib
from collections.abc import Callable
from typing import Protocol, TypeAlias, cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.config.egress import ProxyURL
from proxy.errors import UpstreamError, UpstreamProtocolError
from proxy.upstream.response import NO_HEADERS, Response, _ignore

__all__ = ["NO_HEADERS", "Conn", "Pool", "PoolKey", "Response", "Stale"]

# What pooled connections are kept apart by: scheme, host, port, and the proxy they go
# through (None: direct), so that a proxied and a direct connection never mix.
PoolKey: TypeAlias = tuple[str, str, int, ProxyURL | None]


class Pool(Protocol):
    """Where a connection goes back once its answer is read, and leaves when it closes."""

    def put(self, conn: Conn) -> None: ...

    def forget(self, conn: Conn) -> None: ...


# An upstream's response head larger than this is refused; so are this many bytes
# of anything else that is not body (chunk framing and extensions, trailers) in a row.
_MAX_HEAD = 64 * 1024
_NO_BODY = frozenset({204, 304})
# The usual media types, one shared string each: an answer keeps its own for its life
# (a stream's for minutes).
_MEDIA_TYPES = {t: t for t in ("text/event-stream", "application/json", "text/plain")}
# POLLERR and POLLHUP are reported whether asked for or not.
_STIR = select.POLLIN | select.POLLPRI | getattr(select, "POLLRDHUP", 0)


class Stale(UpstreamProtocolError):
    """A reused keep-alive connection was closed before any byte of the answer, most
    likely dropped by the upstream while idle. ``unsent``: it was found closed as the
    request was written, so the upstream cannot have read the request."""

    def __init__(self, message: str, *, unsent: bool) -> None:
        super().__init__(message)
        self.unsent = unsent


class Conn(asyncio.Protocol):
    """One keep-alive connection to an upstream, answering one request at a time."""

    __slots__ = (
        "_got",
        "_head_bytes",
        "_head_only",
        "_parser",
        "_pool",
        "_raw_headers",
        "_reading",
        "_unasked",
        "_unbodied",
        "_unsent",
        "_until_close",
        "body",
        "closed",
        "idle_timer",
        "key",
        "response",
        "reused",
        "transport",
    )

    def __init__(self, pool: Pool, key: PoolKey) -> None:
        self._pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        # Where the parser's body pieces go: the answer's ``_piece``, or a push's sink.
        self.body: Callable[[bytes], None] = _ignore
        self.reused = False
        self._got = False  # any byte of the current answer arrived
        # Bytes received since the answer began or since its last body piece: its head,
        # then chunk framing and extensions, trailers (see ``data_received``).
        self._unbodied = 0
        self._unsent = False  # the request's write found the connection closed
        self._unasked = False  # the upstream sent bytes while nothing was asked
        self._head_only = False
        self._head_bytes = 0
        self._raw_headers: list[tuple[str, str]] = []
        self._until_close = False
        self._reading = True
        self.idle_timer: asyncio.TimerHandle | None = None
        self.closed = False

    # -- asyncio.Protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio's, but they are ones.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        resp = self.response
        if resp is None:
            # Nothing was asked: an idle connection that talks is not one to reuse.
            self._unasked = True
            self.abort()
            return
        self._got = True
        # What is not body is bounded like the head: httptools hands a header field
        # (a trailer's too) over only once it ends, concatenating its pieces until then
        # (quadratic in the pieces), and lets chunk extensions go by unseen. So count
        # every byte received, and let ``on_body`` zero the count: it only grows while
        # the upstream sends something other than body, and a long stream of small
        # chunks never reaches the bound. The bytes of a read after its last body piece
        # go uncounted, so the bound is _MAX_HEAD plus one read. Cost: one add and one
        # comparison per read, one store per body piece.
        self._unbodied += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            # A callback's own refusal (a head too large) comes wrapped by the parser.
            cause = exc.__context__
            self._fail(
                cause
                if isinstance(cause, UpstreamError)
                else UpstreamProtocolError(f"upstream sent an invalid response: {exc}")
            )
            return
        except httptools.HttpParserUpgrade:
            # Not an HttpParserError: uncaught, it would be a traceback in the loop's log.
            self._fail(UpstreamProtocolError("upstream switched protocols unasked"))
            return
        if self._unbodied > _MAX_HEAD:
            self._fail(self._too_much())

    def _too_much(self) -> UpstreamProtocolError:
        resp = self.response
        if resp is not None and resp._head.done():
            return UpstreamProtocolError(
                f"upstream sent more than {_MAX_HEAD} bytes of trailers or chunk framing"
            )
        return UpstreamProtocolError(f"upstream response head exceeds {_MAX_HEAD} bytes")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.forget(self)
        resp = self.response
        if resp is None:
            return
        self._let_go()
        if resp._head.done() and self._until_close:
            resp._complete()  # a body framed by the connection's end has ended
        elif not resp._head.done() and not self._got and self.reused:
            resp._broken(Stale("upstream closed the connection unexpectedly", unsent=self._unsent))
        elif not resp._head.done():
            resp._broken(UpstreamProtocolError("upstream closed the connection unexpectedly"))
        else:
            resp._broken(
                UpstreamProtocolError(
                    "upstream response body is broken: the connection was lost mid-body"
                )
            )

    def pause_writing(self) -> None:  # the request body is written in one go
        pass

    def resume_writing(self) -> None:
        pass

    # -- httptools callbacks --------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.response is None:
            # More bytes after the answer, in the same read: not a connection to reuse.
            self.abort()
        self._raw_headers = []
        self._head_bytes = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > _MAX_HEAD:
            raise self._too_much()
        self._raw_headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        resp = self.response
        status = self._parser.get_status_code()
        raw, self._raw_headers = self._raw_headers, []
        if resp is None:
            return
        if 100 <= status < 200:
            if status == 101:
                # seamline never asks for an upgrade: what follows is not HTTP.
                raise UpstreamProtocolError("upstream switched protocols (101) unasked")
            # 100 Continue, 103 Early Hints: the answer is still to come. A 1xx has no
            # body (RFC 9110, 15.2), but llhttp reads one when it declares a length or
            # chunks: that upstream and this parser disagree on where the answer starts.
            self.body = _interim_body
            return
        self.body = resp._piece
        headers = CIMultiDict(raw)
        resp.status = status
        resp.headers = CIMultiDictProxy(headers)
        ctype = headers.get("Content-Type")
        if ctype:
            media = ctype.split(";", 1)[0].strip().lower()
            resp.content_type = _MEDIA_TYPES.get(media, media)
        encoding = headers.get("Content-Encoding", "").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            resp._decoder = zlib.decompressobj(47)  # 32 + 15: zlib or gzip header
        elif encoding not in ("", "identity"):
            raise UpstreamProtocolError(
                f"upstream sent a body encoded as {encoding!r}, which seamline cannot read"
            )
        self._until_close = (
            "Content-Length" not in headers
            and "chunked" not in headers.get("Transfer-Encoding", "").lower()
            and status not in _NO_BODY
        )
        resp._head.set_result(None)
        if self._head_only:
            # httptools cannot be told that a HEAD answer has no body: end it here and
            # do not reuse the connection.
            self._let_go()
            resp._complete()
            self.abort()

    def on_body(self, body: bytes) -> None:
        self._unbodied = 0
        self.body(body)

    def on_message_complete(self) -> None:
        resp = self.response
        if resp is None or not resp._head.done():
            return  # the end of a 1xx
        self._let_go()
        keep = self._parser.should_keep_alive() and not self.closed and not resp._exc
        resp._complete()
        if keep:
            self._pool.put(self)
        else:
            self.abort()

    # -- seamline's side ------------------------------------------------------------

    def start(self, resp: Response, request: bytes, head_only: bool) -> None:
        if self.closed:
            # A new connection can be gone before its first request: its upstream spoke
            # first (not an HTTP server), or closed at once.
            resp._broken(
                UpstreamProtocolError(
                    "upstream sent bytes before any request: not an HTTP server?"
                    if self._unasked
                    else "upstream closed the connection unexpectedly"
                )
            )
            return
        self.response = resp
        self.body = resp._piece
        resp._conn = self
        self._got = False
        self._unbodied = 0
        self._head_only = head_only
        self._until_close = False
        assert self.transport is not None
        if not self._reading:
            self.resume()
        self.transport.write(request)
        # A connection that the write finds closed (its peer's reset, EPIPE) is closing
        # once ``write`` returns, on asyncio and uvloop alike: nothing reached the
        # upstream. One that the upstream closes after the write may have been read.
        self._unsent = self.transport.is_closing()

    def _let_go(self) -> Response | None:
        """The current answer, which this connection no longer feeds."""
        resp, self.response = self.response, None
        self.body = _ignore
        return resp

    def pause(self) -> None:
        if self._reading and self.transport is not None and not self.closed:
            self._reading = False
            self.transport.pause_reading()

    def resume(self) -> None:
        if not self._reading and self.transport is not None and not self.closed:
            self._reading = True
            self.transport.resume_reading()

    def _fail(self, exc: UpstreamError) -> None:
        resp = self._let_go()
        if resp is not None:
            resp._broken(exc)
        self.abort()

    def stirred(self) -> bool:
        """Whether this idle connection's socket holds something the loop has not
        handed over yet (bytes sent unasked, its close, a reset): such a connection
        must not carry a request, or those bytes would be read as its answer. One
        ``poll`` system call per reuse of a connection."""
        sock = self.transport.get_extra_info("socket") if self.transport else None
        if sock is None:
            return False
        poller = select.poll()
        poller.register(sock.fileno(), _STIR)
        return bool(poller.poll(0))

    def abort(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        resp = self._let_go()
        if resp is not None:
            resp._conn = None
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.abort()
            self._pool.forget(self)


def _interim_body(data: bytes) -> None:
    raise UpstreamProtocolError("upstream sent a 1xx answer with a body")
