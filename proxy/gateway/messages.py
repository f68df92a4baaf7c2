"""The Anthropic Messages front: ``/v1/messages`` and ``/v1/messages/count_tokens``
served from chat-completions accounts, for Claude Code and the Anthropic SDKs.

A Messages request becomes a chat request (``core/dialects/anthropic_request``), goes
through the routing loop as a chat request does (failover before the first byte, the
pool's lessons), and its answer comes back as Anthropic events (``ChatToAnthropic``)
or one ``message``. Every error this front answers is in Anthropic's format, with the
status its type has: seamline's own (auth, limits, a bad body), the upstream's, and a
stream's failure (``event: error``, never ``message_stop``).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from proxy.config import AccountConfig, Config, ReasoningSwitch
from proxy.core.dialects.anthropic_errors import AnthropicError, from_openai, invalid
from proxy.core.dialects.anthropic_events import encode, ping
from proxy.core.dialects.anthropic_message import completion_to_message
from proxy.core.dialects.anthropic_request import ChatRequest, ChatTarget, to_chat
from proxy.core.dialects.anthropic_request import ReasoningSwitch as Switch
from proxy.core.dialects.anthropic_stream import ChatToAnthropic
from proxy.core.dialects.anthropic_tokens import chat_tokens, count_tokens
from proxy.core.openai import normalize_error, usage_from
from proxy.core.plan import Bodies, Wants
from proxy.core.sse import Item
from proxy.errors import SeamlineError, UpstreamError
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
from proxy.gateway.middleware import check_client, client_key, error_response
from proxy.gateway.relay import ClientStream
from proxy.gateway.reply import Reply
from proxy.gateway.request import Request
from proxy.logs import debug_streaming_enabled, get_logger, mask

log = get_logger("seamline")

Handler = Callable[[Request], Awaitable[Reply]]


class PingStream(ClientStream):
    """The client side of a Messages stream: its heartbeat is Anthropic's ``ping``."""

    __slots__ = ()
    beat = ping()


class AnthropicTranslator:
    """``fronts.Translator`` over ``ChatToAnthropic``."""

    __slots__ = ("machine",)

    def __init__(self, machine: ChatToAnthropic) -> None:
        self.machine = machine

    @property
    def content_started(self) -> bool:
        return self.machine.has_content

    @property
    def done(self) -> bool:
        return self.machine.done or self.machine.errored

    def take(self, items: list[Item]) -> bytes:
        return encode(self.machine.feed_sse(items))

    def end(self, clean: bool) -> bytes:
        return encode(self.machine.end(clean))

    def cut(self, error: UpstreamError) -> bytes:
        return encode(self.machine.fail(error.message, error.status))

    def failure(self) -> tuple[int, bytes] | None:
        machine = self.machine
        if not machine.errored or machine.error is None:
            return None
        payload = normalize_error(json.dumps(machine.error.data).encode())
        return machine.error_status or 502, payload


def anthropic_route(handler: Handler) -> Handler:
    """``handler`` behind the client checks, every error in Anthropic's format."""

    async def checked(request: Request) -> Reply:
        app = request.app
        try:
            check_client(request, app.runtime.router.config.server.api_keys)
            app.gate.rate(client_key(request))
            reply = await handler(request)
        except AnthropicError as err:
            request.outcome.error = err.message
            return Reply(err.status, err.json_bytes(), None, "application/json")
        except SeamlineError as err:
            request.outcome.error = err.message
            reply = error_response(err, request.outcome.request_id)
        return _in_anthropic_format(reply)

    return checked


def _in_anthropic_format(reply: Reply) -> Reply:
    """An error answer not yet sent, in Anthropic's words: its status kept."""
    if reply.prepared or reply.status < 400:
        return reply
    reply.body = from_openai(reply.body, reply.status).json_bytes()
    reply.headers["Content-Type"] = "application/json"
    return reply


def _request(raw: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(raw) if raw else None
    except (ValueError, RecursionError) as exc:
        raise invalid(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise invalid("the request body should be a JSON object")
    return obj


async def create(request: Request) -> Reply:
    """``POST /v1/messages``."""
    rt = request.app.runtime
    router = rt.router
    config = router.config
    outcome = request.outcome
    raw = await request.read(config.server.max_body_bytes)
    body = _request(raw)
    chat = to_chat(body)
    model = router.model_for(chat.model)
    own = {
        acc.name: chat_bodies({**to_chat(body, target).body, "model": model}, raw)
        for acc in config.accounts
        if (target := target_of(acc)) is not None
    }
    outcome.model, outcome.stream = chat.model, chat.stream
    if chat.dropped:
        log.debug("messages_fields_ignored", ignored=list(chat.dropped))
    call = Call(
        "POST",
        "chat/completions",
        "",
        request.headers,
        routes.MESSAGES,
        outcome,
        model,
        Wants(chat.stream, False, True),
        chat_bodies({**chat.body, "model": model}, raw),
        log.bind(request_id=outcome.request_id) if debug_streaming_enabled() else None,
        # Responses-API accounts would need a second translation: left to the others.
        excluded=native.responses_accounts(config),
        own=own or None,
        messages=_passed_through(body, raw, model)
        if anthropic_accounts.messages_accounts(config)
        else None,
    )
    message_id = "msg_" + secrets.token_hex(12)
    estimate = chat_tokens(chat.body)

    async def answer_with(answer: UpstreamAnswer) -> Answered:
        return await _answer(request, config, answer, call, chat, (message_id, estimate))

    return await route(router, rt.streams, call, answer_with)


async def _answer(
    request: Request,
    config: Config,
    answer: UpstreamAnswer,
    call: Call,
    chat: ChatRequest,
    ident: tuple[str, int],
) -> tuple[Reply, tuple[int, bytes] | None, tuple[int, int] | None]:
    """The client's answer, (status, error) when the upstream failed before anything
    reached it, and the usage."""
    message_id, estimate = ident
    if anthropic_accounts.speaks_messages(answer):
        reply, usage, early = await anthropic_accounts.messages_answer(
            request, config, answer, call
        )
        return reply, early, usage
    if chat.stream:
        machine = ChatToAnthropic(
            chat.model, message_id, chat.stop_sequences, chat.tool_names, estimate
        )
        done = await translate_stream(
            request, config, answer, call, AnthropicTranslator(machine), stream_class=PingStream
        )
        return done.reply, done.early, machine.usage
    completion = await read_completion(config, answer)
    if isinstance(completion, bytes):
        reply, early = early_error(call, completion, answer.secrets)
        return reply, early, None
    try:
        message = completion_to_message(
            completion, chat.model, message_id, chat.stop_sequences, chat.tool_names
        )
    except AnthropicError as err:
        payload = json.dumps({"error": {"message": err.message, "type": "api_error"}}).encode()
        reply, early = early_error(call, payload, answer.secrets)
        return reply, early, None
    data = mask(json.dumps(message, ensure_ascii=False).encode(), answer.secrets)
    call.outcome.answered(200, len(data))
    call.started()
    reply = Reply(200, data, None, "application/json")
    return reply, None, usage_from(completion.get("usage"))


_SWITCHES = {
    ReasoningSwitch.ENABLE_THINKING: Switch(
        {"enable_thinking": True}, {"enable_thinking": False}, "thinking_budget"
    ),
    ReasoningSwitch.CHAT_TEMPLATE_KWARGS: Switch(
        {"chat_template_kwargs": {"enable_thinking": True}},
        {"chat_template_kwargs": {"enable_thinking": False}},
    ),
}


def target_of(acc: AccountConfig) -> ChatTarget | None:
    """What a chat account takes beside the default (None: the default)."""
    switch = _SWITCHES.get(acc.reasoning_switch)
    if switch is None and not acc.top_k:
        return None
    return ChatTarget(top_k=acc.top_k, reasoning=switch)


def _passed_through(body: dict[str, Any], raw: bytes, model: str | None) -> Bodies:
    """What an Anthropic account is sent: the client's bytes, unless a model alias
    applies."""
    if model is None or model == body.get("model"):
        return Bodies(raw, fingerprint=hash(raw))
    send = json.dumps({**body, "model": model}, ensure_ascii=False, separators=(",", ":"))
    return Bodies(send.encode(), fingerprint=hash(raw))


async def tokens(request: Request) -> Reply:
    """``POST /v1/messages/count_tokens``: an estimate (``anthropic_tokens``: a
    documented approximation of Claude's tokenizer), never a constant."""
    config = request.app.runtime.router.config
    body = _request(await request.read(config.server.max_body_bytes))
    counted = count_tokens(body)
    return Reply(200, json.dumps(counted).encode(), None, "application/json")
