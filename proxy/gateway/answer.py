"""The client's answer from a usable upstream response: relayed as a repaired stream,
collected into one completion, or passed on whole (a JSON completion made a stream for
a client that wants one). Which, the answer's first bytes and the client's wishes say.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from typing import Any

from multidict import CIMultiDict

from proxy.config import Config
from proxy.core.convert import completion_to_sse
from proxy.core.openai import error_json, error_status, normalize_error, usage_from
from proxy.core.plan import Wants
from proxy.core.shaper import JSON_SPACE, OpenAIShaper
from proxy.core.sse import looks_like_sse
from proxy.errors import UpstreamError
from proxy.gateway.attempt import FailedAnswer, UpstreamAnswer
from proxy.gateway.collect import collect_stream, first_read
from proxy.gateway.context import Call
from proxy.gateway.outcome import Outcome
from proxy.gateway.relay import (
    SSE_HEADERS,
    ClientSide,
    EarlyError,
    RelayOptions,
    relay_stream,
)
from proxy.gateway.reply import Reply
from proxy.logs import mask, redactor
from proxy.upstream.call import header_filter, read_body, response_headers


async def make_answer(
    request: ClientSide, config: Config, answer: UpstreamAnswer, call: Call
) -> tuple[Reply, tuple[int, int] | None, tuple[int, bytes] | None]:
    """The client's answer, the usage it carried, and (status, error) when the upstream
    failed before anything reached the client."""
    outcome, wants, tracer = call.outcome, call.wants, call.tracer
    resp = answer.response
    secrets = answer.secrets
    timeouts = config.timeouts_for(answer.account)
    limit = config.server.max_event_bytes * 8
    allowed = header_filter(config.server.forward_response_headers)
    headers = response_headers(resp.headers, resp.status, allowed)
    headers["X-Request-ID"] = outcome.request_id
    completions = call.route.completion
    sse = resp.content_type == "text/event-stream"
    first = b""
    if completions and not sse and resp.status < 400:
        # Some upstreams label their answer wrongly (an event stream as text/plain or
        # JSON, JSON as text): the first bytes tell what it is.
        first = await first_read(resp, timeouts)
        sse = looks_like_sse(first)
        if sse or (
            first.lstrip(JSON_SPACE).startswith(b"{") and resp.content_type != "application/json"
        ):
            _note_repair(outcome, tracer, "content_type_corrected")
            headers["Content-Type"] = "text/event-stream" if sse else "application/json"
    if sse:
        if completions and not wants.stream:
            # A stream for a client that asked for one JSON answer.
            collector = OpenAIShaper(trace=_tracer(tracer))
            agg, error = await collect_stream(
                resp, timeouts, config.server.max_event_bytes, limit, collector, first
            )
            outcome.repairs.update(collector.repairs)
            usage = usage_from(agg.usage)
            if error is not None:
                # Nothing of it reached the client: another account may still answer.
                outcome.error = _error_message(error)
                status = error_status(error)
                return _json(outcome, headers, status, error, secrets), usage, (status, error)
            _note_repair(outcome, tracer, "stream_aggregated")
            return _json(outcome, headers, resp.status, _dumps(agg.result()), secrets), usage, None
        outcome.stream = True
        shaper = OpenAIShaper(
            keep_event_names=not completions,
            check_endings=completions,
            strip_usage=wants.strip_usage,
            trace=_tracer(tracer),
        )
        options = RelayOptions(
            timeouts,
            config.server.max_event_bytes,
            config.server.heartbeat_s,
            tracer,
            call.started,
            first,
            answer.secrets,
        )
        outcome.counter = shaper
        relaying = relay_stream(request, resp, headers, shaper, outcome, options)
        # The stream keeps its headers only until they are sent, its options and first
        # read no longer than it needs them; this frame, which lives as long as the
        # stream, lets go of them now.
        del headers, options, first
        try:
            streamed = await relaying
        finally:
            if shaper.errored and outcome.error is None:
                outcome.error = _error_message(shaper.error_payload)
        if isinstance(streamed, EarlyError):
            return streamed, shaper.usage, (streamed.status, streamed.payload)
        return streamed, shaper.usage, None
    try:
        data = await read_body(resp, limit, timeouts, first)
    except UpstreamError as exc:
        outcome.error = exc.message
        raise
    obj = _object(data)
    usage = usage_from(obj.get("usage")) if obj is not None else None
    if completions and resp.status < 400 and _no_completion(obj, wants.stream):
        # Neither a stream nor a completion (an empty body, a gateway's HTML page): an
        # empty answer must not pass for a complete one. Nothing reached the client, so
        # another account may still answer.
        preview = redactor.scrub_known(data[:200]).decode("utf-8", "replace")
        message = f"upstream answered {resp.status} with no completion in its body: {preview!r}"
        outcome.error = message
        error = error_json(message, code="upstream_bad_response")
        return _json(outcome, headers, 502, error, secrets), usage, (502, error)
    if completions and wants.stream and resp.status < 400:
        assert obj is not None
        chunks = _json_to_stream(outcome, headers, resp.status, data, obj, wants, tracer, secrets)
        return chunks, usage, None
    return _json(outcome, headers, resp.status, data, secrets), usage, None


def failed_reply(answer: FailedAnswer, outcome: Outcome) -> Reply:
    """An upstream's error answer as the client gets it."""
    headers = answer.headers
    headers["X-Request-ID"] = outcome.request_id
    headers["Content-Type"] = "application/json"
    # Some upstreams echo the key they were sent; it must not reach the client.
    data = normalize_error(redactor.scrub_known(answer.body))
    outcome.answered(answer.status, len(data))
    return Reply(answer.status, data, headers)


def _no_completion(obj: dict[str, Any] | None, stream: bool) -> bool:
    """A 2xx body that holds no answer: not a JSON object at all, or, for a client that
    wants a stream, an object that is neither a completion nor an error."""
    if obj is None:
        return True
    return stream and not obj.get("error") and not isinstance(obj.get("choices"), list)


def _object(data: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None (not JSON, or not an object)."""
    if not data.lstrip(JSON_SPACE).startswith(b"{"):
        return None
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def _json_to_stream(
    outcome: Outcome,
    headers: CIMultiDict[str],
    status: int,
    data: bytes,
    obj: dict[str, Any],
    wants: Wants,
    tracer: Any,
    secrets: tuple[bytes, ...],
) -> Reply:
    """A streaming client answered with a JSON object: a completion becomes its chunk
    stream, an error object an HTTP error (nothing was streamed yet)."""
    if obj.get("error"):
        payload = normalize_error(data)
        return _json(outcome, headers, error_status(payload), payload, secrets)
    _note_repair(outcome, tracer, "json_to_stream")
    outcome.stream = True
    body = mask(completion_to_sse(obj, include_usage=wants.client_usage), secrets)
    outcome.answered(status, len(body))
    headers.update(SSE_HEADERS)
    return Reply(status, body, headers)


def _json(
    outcome: Outcome,
    headers: CIMultiDict[str],
    status: int,
    data: bytes,
    secrets: tuple[bytes, ...] = (),
) -> Reply:
    data = mask(data, secrets)
    outcome.answered(status, len(data))
    if status >= 400:
        data = normalize_error(redactor.scrub_known(data))
        headers["Content-Type"] = "application/json"
    elif "Content-Type" not in headers:
        headers["Content-Type"] = "application/json"
    if headers.get("Content-Type", "").startswith("text/event-stream"):
        headers["Content-Type"] = "application/json"
    return Reply(status, data, headers)


def _error_message(payload: bytes | None) -> str:
    try:
        message = json.loads(payload or b"{}")["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return "the stream ended with an error event"
    return str(message)


def _note_repair(outcome: Outcome, tracer: Any, kind: str) -> None:
    outcome.repairs[kind] = outcome.repairs.get(kind, 0) + 1
    if tracer is not None:
        _trace_repair(tracer, kind)


def _trace_repair(tracer: Any, kind: str) -> None:
    tracer.debug("repair", kind=kind)


def _tracer(tracer: Any) -> Callable[[str], None] | None:
    return None if tracer is None else partial(_trace_repair, tracer)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
