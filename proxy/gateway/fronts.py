"""A front that speaks another dialect than its accounts: the upstream's chat stream
through a translator (a sans-IO state machine of ``core/dialects``) to the client.

What every front shares: nothing reaches the client before the upstream's first
content or error is known (the translator's handshake events are held, so a stream
that fails first may still go to another account, or be answered with an HTTP
status); one client write per upstream read; heartbeats, backpressure and secret
masking as on the chat route (``relay.ClientStream``); a cut, an idle or total timeout
or an oversized event ends the stream through the translator's failure, never its
completion.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from multidict import CIMultiDict

from proxy.config import Config
from proxy.core.convert import completion_to_sse
from proxy.core.openai import error_status, normalize_error
from proxy.core.plan import Bodies
from proxy.core.shaper import OpenAIShaper
from proxy.core.sse import Event, EventTooLarge, Item, Reframer
from proxy.errors import UpstreamError
from proxy.gateway.answer import failed_reply
from proxy.gateway.attempt import FailedAnswer, UpstreamAnswer
from proxy.gateway.collect import collect_stream
from proxy.gateway.context import Call
from proxy.gateway.outcome import Outcome
from proxy.gateway.relay import SSE_HEADERS, ClientSide, ClientStream, EarlyError
from proxy.gateway.reply import Reply, Streamed
from proxy.gateway.routing import Router
from proxy.logs import mask
from proxy.upstream.call import IdleWatch, read_body
from proxy.upstream.wire import Response

Answered = tuple[Reply, tuple[int, bytes] | None, tuple[int, int] | None]


async def route(
    router: Router,
    streams: dict[Response, Outcome],
    call: Call,
    answer_with: Callable[[UpstreamAnswer], Awaitable[Answered]],
) -> Reply:
    """A translated front's routing loop: accounts in turn until one answers; an answer
    that failed before anything reached the client (its (status, error) given) goes to
    the next account when the failure was the account's. ``answer_with`` makes the
    client's answer from one upstream answer: (reply, early failure, usage).

    The chat route has its own copy of this loop (``forward``): there a closure and
    this coroutine's frame would be two more objects held for each stream's life."""
    outcome = call.outcome
    while True:
        answer = await router.open(call)
        if isinstance(answer, FailedAnswer):
            return failed_reply(answer, outcome)
        streams[answer.response] = outcome
        early: tuple[int, bytes] | None = None
        usage: tuple[int, int] | None = None
        completed = False
        try:
            reply, early, usage = await answer_with(answer)
            completed = True
        finally:
            streams.pop(answer.response, None)
            if early is None:
                # Also when the client left midway: the account is released.
                router.finish(answer, outcome, usage, completed)
        if early is None:
            return reply
        failover = router.early_error(answer, early[0], early[1], outcome)
        if not (failover and router.may_retry(call)):
            return reply
        outcome.error = None


class Translator(Protocol):
    """What a front's stream translator offers the gateway (bytes in the front's
    encoding out)."""

    @property
    def content_started(self) -> bool: ...

    @property
    def done(self) -> bool: ...

    def take(self, items: list[Item]) -> bytes: ...

    def end(self, clean: bool) -> bytes: ...

    def cut(self, error: UpstreamError) -> bytes: ...

    def failure(self) -> tuple[int, bytes] | None:
        """When it failed: the HTTP status and the OpenAI error payload."""
        ...


@dataclass(frozen=True, slots=True)
class Translated:
    """How a translated stream ended: its answer, and (status, payload) when it failed
    before anything reached the client."""

    reply: Reply
    early: tuple[int, bytes] | None


async def translate_stream(
    request: ClientSide,
    config: Config,
    answer: UpstreamAnswer,
    call: Call,
    translator: Translator,
    content_type: str = "text/event-stream",
    extra_headers: Mapping[str, str] | None = None,
    stream_class: type[ClientStream] = ClientStream,
    before_end: Callable[[], Awaitable[None]] | None = None,
) -> Translated:
    """Relay an upstream chat answer (an event stream, or one JSON completion) to the
    client through ``translator``. ``before_end`` runs once the translator is done,
    before its last bytes go out: what a client may ask for as soon as it has read the
    end (a stored response) is there by then."""
    resp = answer.response
    timeouts = config.timeouts_for(answer.account)
    server = config.server
    headers: CIMultiDict[str] = CIMultiDict(SSE_HEADERS)
    headers["Content-Type"] = content_type
    headers["X-Request-ID"] = call.outcome.request_id
    headers.update(extra_headers or {})
    client = stream_class(
        request,
        200,
        headers,
        call.outcome,
        server.heartbeat_s,
        call.tracer,
        on_start=call.started,
        secrets=answer.secrets,
    )
    reframer = Reframer(server.max_event_bytes)
    watch = IdleWatch(resp, timeouts.idle, client.is_writing)
    held = b""
    events = 0
    try:
        if resp.content_type != "text/event-stream":
            # A JSON completion for a client that streams: the stream it would have been.
            data = await read_body(resp, server.max_event_bytes * 8, timeouts)
            held = translator.take(reframer.feed(_as_stream(data)) + reframer.close())
            held += translator.end(True)
        else:
            while not translator.done:
                try:
                    chunk = await resp.read()
                except UpstreamError as exc:
                    held += translator.cut(exc)
                    break
                watch.seen()
                client.last_read = watch.last
                try:
                    items = reframer.feed(chunk) if chunk else reframer.close()
                except EventTooLarge as exc:
                    held += translator.take(exc.completed)
                    held += translator.cut(UpstreamError(str(exc)))
                    break
                events += sum(1 for item in items if isinstance(item, Event))
                call.outcome.events = events  # so far, for /admin/streams
                held += translator.take(items)
                if not chunk:
                    held += translator.end(True)
                    break
                if held and (client.prepared or translator.content_started):
                    if translator.done and before_end is not None:
                        await before_end()
                        before_end = None
                    await client.write(held)
                    held = b""
            if translator.done:
                resp.let_finish()
        failed = translator.failure()
        if failed is not None and not client.prepared and not translator.content_started:
            # Nothing reached the client: an HTTP error, or the next account.
            await client.close()
            status, payload = failed
            call.outcome.failed_early(status, len(payload), "upstream failed before its answer")
            out_headers: CIMultiDict[str] = CIMultiDict({"Content-Type": "application/json"})
            payload = mask(payload, answer.secrets)
            return Translated(EarlyError(status, payload, out_headers), failed)
        if failed is not None:
            call.outcome.error = call.outcome.error or "the upstream stream failed"
        if before_end is not None and translator.done:
            await before_end()
        if held:
            await client.write(held)
        await client.close()
        request.end_stream()
    except ConnectionResetError:
        call.outcome.client_gone = True
    finally:
        watch.cancel()
        await client.close()
        resp.close()
    call.outcome.streamed(200, events, {})
    return Translated(Streamed(200, b"", None, content_type), None)


def _as_stream(data: bytes) -> bytes:
    """A JSON completion as the chat stream it would have been, or its error as an
    error event (which the translator fails on)."""
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        obj = None
    if isinstance(obj, dict) and isinstance(obj.get("choices"), list) and not obj.get("error"):
        return completion_to_sse(obj, include_usage=True)
    return b"data: " + normalize_error(data) + b"\n\n"


async def read_completion(config: Config, answer: UpstreamAnswer) -> dict[str, Any] | bytes:
    """A whole chat completion from the upstream's answer (a JSON completion, or an
    event stream collected into one), or the OpenAI error payload it failed with."""
    resp = answer.response
    timeouts = config.timeouts_for(answer.account)
    limit = config.server.max_event_bytes * 8
    if resp.content_type == "text/event-stream":
        agg, error = await collect_stream(
            resp, timeouts, config.server.max_event_bytes, limit, OpenAIShaper()
        )
        if error is not None:
            return error
        completion: Any = agg.result()
        return completion if isinstance(completion, dict) else b""
    data = await read_body(resp, limit, timeouts)
    try:
        completion = json.loads(data)
    except (ValueError, RecursionError):
        completion = None
    if not isinstance(completion, dict) or not isinstance(completion.get("choices"), list):
        return normalize_error(data) if data else b'{"error":{"message":"empty answer"}}'
    return completion


def early_error(
    call: Call, error: bytes, secrets: tuple[bytes, ...]
) -> tuple[Reply, tuple[int, bytes]]:
    """An upstream error before anything reached the client, in OpenAI's format, and
    (status, payload) for the routing loop to judge."""
    payload = mask(normalize_error(error or b'{"error":{"message":"empty answer"}}'), secrets)
    status = error_status(payload)
    call.outcome.failed_early(status, len(payload), "upstream failed before its answer")
    headers: CIMultiDict[str] = CIMultiDict({"Content-Type": "application/json"})
    return Reply(status, payload, headers), (status, payload)


def chat_bodies(chat_body: dict[str, Any], raw: bytes) -> Bodies:
    """What chat accounts are sent for a translated request: with the usage chunk asked
    for, and (``plain``) without, for an account that refuses ``stream_options``."""
    send = json.dumps(chat_body, ensure_ascii=False, separators=(",", ":")).encode()
    if "stream_options" not in chat_body:
        return Bodies(send, fingerprint=hash(raw))
    plain_body = {k: v for k, v in chat_body.items() if k != "stream_options"}
    plain = json.dumps(plain_body, ensure_ascii=False, separators=(",", ":")).encode()
    return Bodies(send, plain, fingerprint=hash(raw))
