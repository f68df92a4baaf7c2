"""The streaming loop: upstream bytes -> reframer -> shaper -> client.

One client write per upstream read, so whatever one read completes goes out
together and nothing complete is ever held back for the next read. Until the client's
headers are out, upstream reads are awaited; from then on they are pushed, each
handled inside the upstream socket's callback. Backpressure: a full client buffer
pauses reading the upstream socket until the client has drained it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from multidict import CIMultiDict

from proxy.config import Timeouts
from proxy.core.openai import TRUNCATED, error_event, error_status
from proxy.core.shaper import OpenAIShaper
from proxy.core.sse import EventTooLarge, Reframer
from proxy.errors import (
    SeamlineError,
    StreamTooLarge,
    UpstreamError,
    UpstreamProtocolError,
)
from proxy.gateway.outcome import Outcome
from proxy.gateway.reply import Reply, Streamed
from proxy.logs import mask, shown, trace_bytes
from proxy.upstream.call import IdleWatch
from proxy.upstream.wire import NO_HEADERS, Response

SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
KEEPALIVE = b": keep-alive\n\n"


class ClientSide(Protocol):
    """What the relay needs of the client's request: its answer's writing surface
    (``request.Request`` is one; the relay knows nothing else of the request)."""

    @property
    def ended(self) -> bool: ...

    def send(self, data: bytes, last: bool = False) -> int: ...

    async def start_stream(
        self, status: int, headers: CIMultiDict[str], data: bytes, last: bool = False
    ) -> None: ...

    async def drain(self) -> None: ...

    def end_stream(self) -> None: ...


_SENT: CIMultiDict[str] = CIMultiDict()  # a stream's headers, once they went out
# Past this many bytes queued towards the client, wait for its socket to drain
# (backpressure: meanwhile the upstream is not read either).
_HIGH_WATER = 0x10000


class ClientStream:
    """The client side of one relayed stream.

    Headers go out with the first bytes, not before: until then an error can still
    be answered with a proper HTTP status. While the upstream is silent for
    ``heartbeat`` seconds a comment block keeps proxies and load balancers from
    cutting the connection; it is never sent while a write is pending.
    """

    __slots__ = (
        "_beat",
        "_drain",
        "_heartbeat",
        "_loop",
        "_on_start",
        "_timer",
        "headers",
        "last_read",
        "log",
        "outcome",
        "prepared",
        "request",
        "secrets",
        "status",
        "writing",
    )

    def __init__(
        self,
        request: ClientSide,
        status: int,
        headers: CIMultiDict[str],
        outcome: Outcome,
        heartbeat: float,
        log: Any,
        *,
        on_start: Callable[[], None] | None = None,
        secrets: tuple[bytes, ...] = (),
    ) -> None:
        self.request = request
        self.secrets = secrets
        self._on_start = on_start
        self.status = status
        self.headers = headers
        self.outcome = outcome
        self.log = log
        self.prepared = False
        self.writing = False
        self._loop = asyncio.get_running_loop()
        self.last_read = self._loop.time()
        self._heartbeat = heartbeat
        self._timer: asyncio.TimerHandle | None = None
        self._beat: asyncio.Task[None] | None = None
        self._drain: asyncio.Task[None] | None = None
        if heartbeat > 0:
            self._timer = self._loop.call_later(heartbeat, self._tick)

    async def write(self, data: bytes, last: bool = False) -> None:
        """Send ``data`` (``last``: and the end of the body with it, in the same write)."""
        if self.request.ended:
            return  # a heartbeat due after the end
        if self.secrets:
            data = mask(data, self.secrets)  # whole events only: no secret is split
        outcome = self.outcome
        outcome.bytes_out += len(data)
        if self.log is not None:
            self.log.debug("client_write", size=len(data), data=shown(data, trace_bytes()))
        if self.prepared:
            # After the headers: one chunk, one transport write (``write_now`` is the
            # same for pushed reads).
            if self.request.send(data, last) > _HIGH_WATER:
                self.writing = True
                try:
                    await self.request.drain()
                finally:
                    self.writing = False
            return
        # The first write: the head goes out with it, in the same transport write.
        self.prepared = True
        if outcome.first_byte is None:
            outcome.first_byte = time.monotonic()
        if self._on_start is not None:
            self._on_start()
            self._on_start = None
        headers, self.headers = self.headers, _SENT
        self.writing = True  # no heartbeat meanwhile
        try:
            await self.request.start_stream(self.status, headers, data, last)
        finally:
            self.writing = False

    def write_now(self, data: bytes, upstream: Response, last: bool = False) -> None:
        """``write`` for a pushed body, called from the upstream socket's callback once
        the headers are out: it cannot wait, so a full client buffer pauses reading
        ``upstream`` until the client has taken it. ``last``: the end of the body goes
        in the same write (one system call, and one wake-up of the client, fewer)."""
        for secret in self.secrets:
            # Inline, not ``mask``: a call per event costs more than this scan, which
            # is one memchr-speed search of the event for the account's key.
            if secret in data:
                data = mask(data, self.secrets)
                break
        self.outcome.bytes_out += len(data)
        if self.log is not None:
            self.log.debug("client_write", size=len(data), data=shown(data, trace_bytes()))
        if self.request.send(data, last) > _HIGH_WATER and not self.writing:
            self.writing = True
            upstream.pause()
            self._drain = self._loop.create_task(self._wait_drained(upstream))

    async def _wait_drained(self, upstream: Response) -> None:
        try:
            await self.request.drain()
        except (ConnectionResetError, RuntimeError) as exc:
            upstream.interrupt(ConnectionResetError(str(exc)))
        finally:
            self.writing = False
            upstream.resume()

    def is_writing(self) -> bool:
        return self.writing

    def _tick(self) -> None:
        idle = self._loop.time() - self.last_read
        wait = self._heartbeat - idle
        if wait <= 0:
            if not self.writing and (self._beat is None or self._beat.done()):
                self._beat = self._loop.create_task(self._send_beat())
            wait = self._heartbeat
        self._timer = self._loop.call_later(wait, self._tick)

    # What a heartbeat writes: a comment, which every SSE parser skips (a front whose
    # clients expect another, Anthropic's ``event: ping``, subclasses: no slot per stream).
    beat = KEEPALIVE

    async def _send_beat(self) -> None:
        # A gone client is noticed by the relay loop on its own next write.
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await self.write(self.beat)
        if self.log is not None:
            self.log.debug("heartbeat")

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for task in (self._beat, self._drain):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


@dataclass(frozen=True, slots=True)
class RelayOptions:
    """How one stream is relayed.

    ``log`` is given only when DEBUG_STREAMING is on; otherwise the loop does no
    per-read logging work at all. ``on_start`` is called once, when the first byte
    goes to the client: from then on the request cannot go to another account.
    ``first``: the body's first read, when the caller already made it. ``secrets``:
    what the upstream was sent that must not reach the client.
    """

    timeouts: Timeouts
    max_event_bytes: int
    heartbeat: float = 0.0
    log: Any = None
    on_start: Callable[[], None] | None = None
    first: bytes = b""
    secrets: tuple[bytes, ...] = ()


class _Reads:
    """What a stream does with each upstream read: reframe, shape, write to the client.

    A slotted object, not closures over the relay's locals: it lives as long as the
    stream, and the closures held two function objects and nine cells (about 0.9 KiB a
    stream, tracemalloc); this is about 0.2 KiB with its one bound method.
    """

    __slots__ = (
        "client",
        "log",
        "loop",
        "max_event_bytes",
        "reframer",
        "shaper",
        "upstream",
        "watch",
    )

    def __init__(
        self,
        client: ClientStream,
        upstream: Response,
        shaper: OpenAIShaper,
        options: RelayOptions,
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.shaper = shaper
        self.log = options.log
        self.max_event_bytes = options.max_event_bytes
        self.reframer = Reframer(options.max_event_bytes)
        self.loop = asyncio.get_running_loop()
        self.watch = IdleWatch(upstream, options.timeouts.idle, client.is_writing)

    def convert(self, chunk: bytes) -> bytes:
        self.client.last_read = self.watch.last = self.loop.time()
        if self.log is not None:
            self.log.debug("upstream_read", size=len(chunk), data=shown(chunk, trace_bytes()))
        shaper, reframer = self.shaper, self.reframer
        if reframer.idle and len(chunk) <= self.max_event_bytes and shaper.passthrough(chunk):
            return chunk
        return shaper.render(reframer.feed(chunk))

    def pushed(self, chunk: bytes) -> None:
        # The hot path: inside the upstream's socket callback, no task switch.
        upstream, shaper = self.upstream, self.shaper
        try:
            out = self.convert(chunk)
            if out:
                self.client.write_now(out, upstream, shaper.done)
            if shaper.done:
                upstream.stop()
        except Exception as exc:  # it ends the push, as a failed read would
            upstream.interrupt(exc)


async def relay_stream(
    request: ClientSide,
    upstream: Response,
    headers: CIMultiDict[str],
    shaper: OpenAIShaper,
    outcome: Outcome,
    options: RelayOptions,
) -> Reply:
    """Relay an upstream event stream to the client, repairing it on the way."""
    headers.update(SSE_HEADERS)
    secrets = options.secrets
    client = ClientStream(
        request,
        upstream.status,
        headers,
        outcome,
        options.heartbeat,
        options.log,
        on_start=options.on_start,
        secrets=secrets,
    )
    reads = _Reads(client, upstream, shaper, options)
    chunk = options.first
    # A stream can live for minutes: this frame keeps neither the headers (the client
    # stream lets go of them once they are sent) nor the options (``on_start`` is let
    # go after the first byte, ``first`` once it is relayed).
    del headers, options
    failure: SeamlineError | None = None
    try:
        try:
            ended = True  # False: stopped early, at [DONE] or at a first event that failed
            chunk = chunk or await upstream.read()
            while chunk:
                out = reads.convert(chunk)
                if out:
                    if not client.prepared and _only_error(shaper):
                        ended = False
                        break
                    # After [DONE] nothing may follow: the body ends in the same write.
                    await client.write(out, shaper.done)
                if shaper.done:
                    # Nothing may follow [DONE]: end the client's stream now, not when the
                    # upstream closes; clients that read to the end would wait for it.
                    ended = False
                    upstream.let_finish()
                    break
                if client.prepared and not upstream.buffered():
                    # The headers are out: from here on every read is pushed, and
                    # the upstream's headers are needed no more.
                    upstream.headers = NO_HEADERS
                    # Nor the first read and what it became, for the stream's life.
                    chunk = out = b""
                    ended = await upstream.push(reads.pushed)
                    break
                chunk = await upstream.read()
            out = shaper.render(reads.reframer.close()) + shaper.finish() if ended else b""
        except EventTooLarge as exc:
            failure = StreamTooLarge(str(exc))
            out = shaper.render(exc.completed)
        except UpstreamError as exc:
            # Whatever the reframer holds is an event the upstream never finished. Even
            # after a finish_reason the stream was cut (its usage chunk, its [DONE]):
            # the client is told, never shown a clean end.
            failure = mid_stream_error(exc, shaper)
            out = b""
        if failure is not None:
            out += error_event(failure.message, code=failure.code)
            outcome.error = failure.message
        if not client.prepared and (
            _only_error(shaper) or (failure is not None and shaper.events == 0)
        ):
            # Nothing reached the client yet: an error can still be an HTTP status.
            await client.close()
            return _status_error(shaper, failure, outcome, client.headers, secrets)
        if out:
            await client.write(out)
        await client.close()
        request.end_stream()
    except ConnectionResetError:
        # The client went away; the finally below closes the upstream at once.
        outcome.client_gone = True
    finally:
        reads.watch.cancel()
        await client.close()
        # A body read to its end has already gone back to the pool; this closes a
        # connection with anything of it left unread, which no other request may reuse.
        upstream.close()
        outcome.streamed(upstream.status, shaper.events, shaper.repairs)
    return Streamed(upstream.status, b"", None, "text/event-stream")


def mid_stream_error(exc: UpstreamError, shaper: OpenAIShaper) -> UpstreamError:
    if isinstance(exc, UpstreamProtocolError) and shaper.check_endings and not shaper.finished:
        # A connection that dies before the answer ended truncated it, as a clean
        # end there does: the client must be told so, not just "connection lost".
        return UpstreamProtocolError(f"{TRUNCATED}; {exc.message}")
    return exc


def _only_error(shaper: OpenAIShaper) -> bool:
    return shaper.errored and shaper.events == 0


class EarlyError(Reply):
    """The answer to a stream that failed before anything reached the client: its first
    event was an error, or it broke before any event. The request may still go to
    another account; ``payload`` is the error object."""

    __slots__ = ("payload",)

    def __init__(self, status: int, payload: bytes, headers: CIMultiDict[str]) -> None:
        super().__init__(status, payload, headers)
        self.payload = payload


def _status_error(
    shaper: OpenAIShaper,
    failure: SeamlineError | None,
    outcome: Outcome,
    headers: CIMultiDict[str],
    secrets: tuple[bytes, ...],
) -> EarlyError:
    payload = shaper.error_payload
    status = 502
    if payload is None and failure is not None:
        payload, status = failure.json_bytes(), failure.status
    elif payload is not None:
        status = error_status(payload)
    assert payload is not None
    payload = mask(payload, secrets)
    outcome.failed_early(status, len(payload), "upstream stream carried an error")
    out_headers = CIMultiDict(
        (k, v)
        for k, v in headers.items()
        if k.lower() not in ("cache-control", "x-accel-buffering")
    )
    out_headers["Content-Type"] = "application/json"
    return EarlyError(status, payload, out_headers)
