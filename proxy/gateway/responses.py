"""The Responses API front: ``/v1/responses`` served from chat-completions accounts.

A Responses request becomes a chat request (``core/dialects``), goes through the same
routing loop as a chat request (failover before the first byte, circuits, the pool's
lessons), and its answer is translated back: a stream event by event (the handshake
held until the upstream's first content or error), a whole answer as one ``response``.
With ``store`` (OpenAI's default) the conversation is kept for later turns'
``previous_response_id`` and for ``GET``/``DELETE /v1/responses/{id}``.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from proxy.config import Config
from proxy.core.dialects.responses import (
    ChatRequest,
    ChatToResponses,
    RequestError,
    UpstreamFailure,
    completion_to_response,
    encode_events,
    sequential_ids,
    translate_request,
)
from proxy.core.dialects.responses_input import input_items
from proxy.core.openai import usage_from
from proxy.core.plan import Bodies, Wants
from proxy.core.sse import Item
from proxy.errors import InvalidJSON, NotFound, UpstreamError
from proxy.gateway import anthropic_accounts, native, routes
from proxy.gateway.attempt import UpstreamAnswer
from proxy.gateway.context import Call
from proxy.gateway.fronts import (
    Answered,
    chat_bodies,
    early_error,
    read_completion,
    route,
    translate_stream,
)
from proxy.gateway.middleware import client_key
from proxy.gateway.reply import Reply
from proxy.gateway.request import Request
from proxy.logs import debug_streaming_enabled, fingerprint, get_logger, mask

log = get_logger("seamline")

# Hosted tools a chat upstream cannot run, left out of the upstream request: named here.
DROPPED_TOOLS_HEADER = "X-Seamline-Dropped-Tools"


class ResponsesTranslator:
    """``fronts.Translator`` over the Responses dialect's state machine."""

    __slots__ = ("machine",)

    def __init__(self, machine: ChatToResponses) -> None:
        self.machine = machine

    @property
    def content_started(self) -> bool:
        return self.machine.content_started

    @property
    def done(self) -> bool:
        return self.machine.done

    def take(self, items: list[Item]) -> bytes:
        return encode_events(self.machine.feed_items(items))

    def end(self, clean: bool) -> bytes:
        return encode_events(self.machine.end(clean))

    def cut(self, error: UpstreamError) -> bytes:
        failure = UpstreamFailure(error.message, error.code, status=error.status)
        return encode_events(self.machine.fail(failure))

    def failure(self) -> tuple[int, bytes] | None:
        failed = self.machine.failure
        if failed is None:
            return None
        return failed.status, json.dumps(failed.chat_error()).encode()


async def create(request: Request) -> Reply:
    """``POST /v1/responses``."""
    rt = request.app.runtime
    router = rt.router
    config = router.config
    outcome = request.outcome
    raw = await request.read(config.server.max_body_bytes)
    body = _object(raw)
    native_names = native.responses_accounts(config)
    owner = _owner(request)
    excluded: tuple[str, ...] = ()
    history: list[Any] | None = []
    previous = body.get("previous_response_id")
    if previous is not None:
        record = await rt.conversations.get(owner + str(previous))
        if record is not None:
            history = list(record.get("items") or [])
        elif native_names:
            # Not one seamline kept: perhaps the upstream's own; only it can know.
            history, excluded = None, native.chat_accounts(config)
        else:
            err = NotFound(f"Previous response with id '{previous}' not found.")
            err.code = "previous_response_not_found"
            raise err
    model = router.model_for(body.get("model"))
    chat: ChatRequest | None = None
    try:
        chat = translate_request(body, history or [])
    except RequestError as exc:
        if not native_names:
            outcome.error = exc.message
            return Reply(exc.status, exc.json_bytes(), None, "application/json")
        excluded = native.chat_accounts(config)  # what only a Responses upstream can do
    if excluded and not native_names:
        excluded = ()
    # Anthropic accounts would need a second translation: left to the others.
    excluded = (*excluded, *anthropic_accounts.messages_accounts(config))
    stream = body.get("stream") is True
    outcome.model, outcome.stream = body.get("model"), stream
    if chat is not None and chat.dropped_tools:
        log.info(
            "hosted_tools_dropped", tools=list(chat.dropped_tools), request_id=outcome.request_id
        )
    call = Call(
        "POST",
        "chat/completions",
        "",
        request.headers,
        routes.RESPONSES,
        outcome,
        model,
        Wants(stream, False, True),
        chat_bodies({**chat.body, "model": model}, raw) if chat is not None else None,
        log.bind(request_id=outcome.request_id) if debug_streaming_enabled() else None,
        native=_native_body(body, raw, model, history) if native_names else None,
        excluded=excluded,
    )
    response_id = "resp_" + secrets.token_hex(24)
    seed, created = secrets.token_hex(6), int(time.time())
    ident = (response_id, created, seed)
    store = body.get("store", True) is not False and history is not None

    async def keep(response: dict[str, Any] | None) -> None:
        if not store or response is None:
            return
        stored_id = str(response.get("id") or response_id)
        items = [*(history or []), *_input_items(body), *(response.get("output") or [])]
        record = {"response": response, "items": items}
        await rt.conversations.put(owner + stored_id, record)

    async def answer_with(answer: UpstreamAnswer) -> Answered:
        if native.speaks_responses(answer):
            reply, early, response = await _native(request, config, answer, call, stream, keep)
            usage = _usage(response)
        else:
            assert chat is not None
            reply, early, usage = await _answer(request, config, answer, call, chat, ident, keep)
        return reply, early, usage

    reply = await route(router, rt.streams, call, answer_with)
    if chat is not None and chat.dropped_tools and not reply.prepared:
        reply.headers[DROPPED_TOOLS_HEADER] = ",".join(chat.dropped_tools)
    return reply


async def _native(
    request: Request,
    config: Config,
    answer: UpstreamAnswer,
    call: Call,
    stream: bool,
    keep: native.Keep,
) -> tuple[Reply, tuple[int, bytes] | None, dict[str, Any] | None]:
    if stream:
        return await native.responses_stream(request, config, answer, call, keep)
    reply, early, response = await native.responses_whole(config, answer, call)
    await keep(response)
    return reply, early, response


def _native_body(
    body: dict[str, Any], raw: bytes, model: str | None, history: list[Any] | None
) -> Bodies:
    """What a Responses account is sent: the client's bytes, unless a model alias
    applies or the conversation so far is one seamline kept (then sent whole, as the
    upstream never saw it)."""
    changes: dict[str, Any] = {}
    if model is not None and model != body.get("model"):
        changes["model"] = model
    if history:
        changes["input"] = [*history, *_input_items(body)]
    if not changes:
        return Bodies(raw, fingerprint=hash(raw))
    rest = {k: v for k, v in body.items() if not (history and k == "previous_response_id")}
    send = json.dumps({**rest, **changes}, ensure_ascii=False, separators=(",", ":")).encode()
    return Bodies(send, fingerprint=hash(raw))


def _input_items(body: dict[str, Any]) -> list[Any]:
    try:
        return input_items(body.get("input"))
    except RequestError:
        return []


async def _answer(
    request: Request,
    config: Config,
    answer: UpstreamAnswer,
    call: Call,
    chat: ChatRequest,
    ident: tuple[str, int, str],
    keep: native.Keep,
) -> Answered:
    """The client's answer, (status, error) when the upstream failed before anything
    reached it, and the usage; the finished response goes to ``keep`` before the client
    has it. ``ident``: the response's id, creation time and id seed (the same on a
    retry)."""
    response_id, created, seed = ident
    if chat.stream:
        machine = ChatToResponses(
            chat, response_id=response_id, created_at=created, ids=sequential_ids(seed)
        )
        translator = ResponsesTranslator(machine)
        dropped = (
            {DROPPED_TOOLS_HEADER: ",".join(chat.dropped_tools)} if chat.dropped_tools else None
        )

        def finished() -> dict[str, Any] | None:
            return machine.response() if machine.status in ("completed", "incomplete") else None

        done = await translate_stream(
            request,
            config,
            answer,
            call,
            translator,
            extra_headers=dropped,
            before_end=lambda: keep(finished()),
        )
        final = machine.response() if machine.done else None
        return done.reply, done.early, _usage(final)
    completion = await read_completion(config, answer)
    if isinstance(completion, bytes):
        reply, early = early_error(call, completion, answer.secrets)
        return reply, early, None
    response = completion_to_response(
        chat, completion, response_id=response_id, created_at=created, ids=sequential_ids(seed)
    )
    data = mask(json.dumps(response, ensure_ascii=False).encode(), answer.secrets)
    call.outcome.answered(200, len(data))
    call.started()
    await keep(response)
    return Reply(200, data, None, "application/json"), None, _usage(response)


def _usage(response: dict[str, Any] | None) -> tuple[int, int] | None:
    return usage_from(response.get("usage")) if response is not None else None


def _object(raw: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(raw) if raw else None
    except (ValueError, RecursionError) as exc:
        raise InvalidJSON(f"request body is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidJSON("request body must be a JSON object")
    return obj


def _owner(request: Request) -> str:
    """Whose stored responses a request may see: its client key's fingerprint, so no
    client reads, continues or deletes another's conversation, even under an id an
    upstream made and may reuse (a Responses account's ids are passed through). Taken
    while the request's headers are at hand: a stream lets go of them."""
    return fingerprint(client_key(request)) + ":"


async def stored(request: Request) -> Reply:
    """``GET`` and ``DELETE /v1/responses/{id}``: a stored response, else a 404 in
    OpenAI's format."""
    response_id = request.path.removeprefix("/v1/responses/")
    conversations = request.app.runtime.conversations
    owner = _owner(request)
    record = await conversations.get(owner + response_id)
    if record is None:
        err = NotFound(f"Response with id '{response_id}' not found.")
        err.code = "response_not_found"
        raise err
    if request.method == "DELETE":
        await conversations.delete(owner + response_id)
        body: Any = {"id": response_id, "object": "response", "deleted": True}
    else:
        body = record["response"]
    return Reply(200, json.dumps(body, ensure_ascii=False).encode(), None, "application/json")
