"""Reading a whole upstream event stream for a client that asked for one answer, and
the first bytes of a body, to tell what it is by them (not by its label)."""

from __future__ import annotations

import json

from proxy.config import Timeouts
from proxy.core.convert import Aggregator
from proxy.core.openai import DONE, error_json
from proxy.core.shaper import OpenAIShaper
from proxy.core.sse import EventTooLarge, Reframer, too_short_to_tell
from proxy.errors import UpstreamError, UpstreamProtocolError, UpstreamTimeout
from proxy.gateway.relay import mid_stream_error
from proxy.upstream.call import IdleWatch
from proxy.upstream.wire import Response


async def collect_stream(
    upstream: Response,
    timeouts: Timeouts,
    max_event_bytes: int,
    limit: int,
    shaper: OpenAIShaper | None = None,
    first: bytes = b"",
) -> tuple[Aggregator, bytes | None]:
    """Read a whole upstream event stream into one completion, for a non-streaming client.

    Returns the aggregate and, when the stream carried an error or ended before the
    answer did, that error as OpenAI JSON. The shaper's verdicts (errors, [DONE],
    glued events) decide what is merged; pass one (with ``trace``) to read its
    ``repairs`` afterwards.
    """
    shaper = OpenAIShaper() if shaper is None else shaper
    agg = Aggregator()
    reframer = Reframer(max_event_bytes)
    size = 0
    watch = IdleWatch(upstream, timeouts.idle)
    try:
        chunk = first or await upstream.read()
        while chunk:
            watch.seen()
            size += len(chunk)
            if size > limit:
                raise UpstreamError(f"upstream response exceeds {limit} bytes")
            _aggregate(shaper.render(reframer.feed(chunk)), agg)
            if shaper.done:
                upstream.let_finish()
                break
            if shaper.errored:
                break
            chunk = await upstream.read()
        else:
            _aggregate(shaper.render(reframer.close()) + shaper.finish(), agg)
    except EventTooLarge as exc:
        return agg, error_json(str(exc), code="event_too_large")
    except (UpstreamTimeout, UpstreamProtocolError) as exc:
        err = mid_stream_error(exc, shaper)
        return agg, error_json(err.message, code=err.code)
    finally:
        watch.cancel()
        upstream.close()
    return agg, shaper.error_payload


async def first_read(upstream: Response, timeouts: Timeouts) -> bytes:
    """The body's first bytes (b"" for an empty body), to tell what it is by them."""
    head = b""
    watch = IdleWatch(upstream, timeouts.idle)
    try:
        while chunk := await upstream.read():
            head += chunk
            if not too_short_to_tell(head):
                break
        return head
    except UpstreamError:
        upstream.close()
        raise
    finally:
        watch.cancel()


def _aggregate(rendered: bytes, agg: Aggregator) -> None:
    for block in rendered.split(b"\n\n"):
        if not block.startswith(b"data: "):
            continue
        payload = block[6:].replace(b"\ndata: ", b"\n")
        if payload.startswith(DONE):
            continue
        try:
            agg.add(json.loads(payload))
        except ValueError:
            continue
