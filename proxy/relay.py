"""The streaming loop: upstream bytes -> reframer -> shaper -> client.

One client write per upstream read, so whatever one read completes goes out
together and nothing complete is ever held back for the next read. Backpressure is
aiohttp's: ``write`` waits while the client's socket buffer is full, and while we
wait we do not read the upstream, whose reader then stops reading its socket.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from .config import Timeouts
from .errors import SeamlineError, StreamTooLarge, UpstreamError
from .repair import OpenAIShaper, error_event
from .sse import EventTooLarge, Reframer
from .upstream import map_error

SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
_PREVIEW = 160


@dataclass(slots=True)
class Outcome:
    """What happened to one request; the summary log line is made from it."""

    request_id: str
    route: str
    model: str | None = None
    stream: bool = False
    account: str | None = None
    status: int | None = None
    events: int = 0
    bytes_out: int = 0
    started: float = field(default_factory=time.monotonic)
    first_byte: float | None = None
    error: str | None = None
    client_gone: bool = False
    attempts: list[dict[str, Any]] = field(default_factory=list)
    repairs: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        now = time.monotonic()
        out: dict[str, Any] = {
            "request_id": self.request_id,
            "route": self.route,
            "model": self.model,
            "account": self.account,
            "status": self.status,
            "streamed": self.stream,
            "events": self.events,
            "bytes": self.bytes_out,
            "ttfb_ms": None
            if self.first_byte is None
            else round((self.first_byte - self.started) * 1000, 2),
            "duration_ms": round((now - self.started) * 1000, 2),
        }
        if self.error:
            out["error"] = self.error
        if self.client_gone:
            out["client_gone"] = True
        if self.attempts:
            out["failed_attempts"] = self.attempts
        if self.repairs:
            out["repairs"] = self.repairs
        return out


def _preview(data: bytes) -> str:
    text = repr(data[:_PREVIEW])[2:-1]
    return text + "..." if len(data) > _PREVIEW else text


async def relay_stream(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    headers: CIMultiDict[str],
    shaper: OpenAIShaper,
    outcome: Outcome,
    *,
    timeouts: Timeouts,
    max_event_bytes: int,
    log: Any = None,
) -> web.StreamResponse:
    """Relay an upstream event stream to the client, repairing it on the way.

    ``log`` is given only when DEBUG_STREAMING is on; otherwise the loop does no
    per-read logging work at all.
    """
    headers.update(SSE_HEADERS)
    resp = web.StreamResponse(status=upstream.status, headers=headers)
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    outcome.status = upstream.status
    _fail_body_on_close(upstream)
    reframer = Reframer(max_event_bytes)
    failure: SeamlineError | None = None
    try:
        try:
            async for chunk in upstream.content.iter_any():
                if log is not None:
                    log.debug("upstream_read", size=len(chunk), preview=_preview(chunk))
                out = shaper.render(reframer.feed(chunk))
                if out:
                    await _write(resp, out, outcome, log)
            out = shaper.render(reframer.close()) + shaper.finish()
        except EventTooLarge as exc:
            failure = StreamTooLarge(str(exc))
            out = shaper.render(exc.completed)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            failure = map_error(exc, timeouts, headers_phase=False)
            # Whatever the reframer holds is an event the upstream never finished.
            out = b""
        if failure is not None:
            out += error_event(failure.message, code=failure.code)
            outcome.error = failure.message
        if out:
            await _write(resp, out, outcome, log)
        await resp.write_eof()
    except ConnectionResetError:
        # The client went away; the finally below closes the upstream at once.
        outcome.client_gone = True
    finally:
        upstream.close()
        outcome.events = shaper.events
        if shaper.repairs:
            outcome.repairs = dict(shaper.repairs)
    return resp


def _fail_body_on_close(upstream: aiohttp.ClientResponse) -> None:
    """Make a read fail, not hang, when the upstream connection dies mid-body.

    After a chunked-encoding error aiohttp closes the connection but leaves the body
    reader waiting, with no read timeout left to end the wait.
    """
    conn = upstream.connection
    closed = conn.protocol.closed if conn is not None and conn.protocol is not None else None
    if closed is None:
        return
    content = upstream.content

    def on_closed(fut: asyncio.Future[None]) -> None:
        if not fut.cancelled():
            fut.exception()  # retrieved, so asyncio does not warn about it
        if not content.is_eof() and content.exception() is None:
            content.set_exception(aiohttp.ClientPayloadError("upstream connection lost mid-body"))

    closed.add_done_callback(on_closed)


async def _write(resp: web.StreamResponse, out: bytes, outcome: Outcome, log: Any) -> None:
    if outcome.first_byte is None:
        outcome.first_byte = time.monotonic()
    outcome.bytes_out += len(out)
    if log is not None:
        log.debug("client_write", size=len(out), preview=_preview(out))
    await resp.write(out)


async def read_body(upstream: aiohttp.ClientResponse, limit: int, timeouts: Timeouts) -> bytes:
    """Read a whole non-streamed upstream body, refusing one over ``limit`` bytes."""
    parts: list[bytes] = []
    size = 0
    try:
        async for chunk in upstream.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise UpstreamError(f"upstream response exceeds {limit} bytes")
            parts.append(chunk)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise map_error(exc, timeouts, headers_phase=False) from exc
    finally:
        upstream.release()
    return b"".join(parts)
