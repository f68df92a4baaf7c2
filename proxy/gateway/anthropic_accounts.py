"""Accounts that speak Anthropic's Messages API (``kind = "anthropic"``).

A chat client's request for such an account goes to its /v1/messages as a Messages
request (``core/dialects/anthropic_reverse``), and the answer comes back as chat
chunks (``AnthropicToChat``) or one ``chat.completion``; a Messages client's request
goes there as it came, its events passed through (``anthropic_relay``). As on every
route: nothing reaches the client before the upstream's first content or error, and a
stream that stops early ends with an error, never a completion.
"""

from __future__ import annotations

import json
import time
from typing import Any

from proxy.config import Api, Config
from proxy.core.dialects.anthropic_chat_stream import AnthropicToChat
from proxy.core.dialects.anthropic_errors import to_openai
from proxy.core.dialects.anthropic_maps import chat_usage
from proxy.core.dialects.anthropic_message import message_to_completion
from proxy.core.dialects.anthropic_relay import MessagesRelay
from proxy.core.openai import usage_from
from proxy.core.sse import Item
from proxy.errors import UpstreamError
from proxy.gateway.attempt import UpstreamAnswer
from proxy.gateway.context import Call
from proxy.gateway.fronts import early_error, translate_stream
from proxy.gateway.relay import ClientSide
from proxy.gateway.reply import Reply
from proxy.logs import mask
from proxy.upstream.call import read_body

Answer = tuple[Reply, tuple[int, int] | None, tuple[int, bytes] | None]


def speaks_messages(answer: UpstreamAnswer) -> bool:
    return answer.account.api is Api.MESSAGES


def messages_accounts(config: Config) -> tuple[str, ...]:
    return tuple(a.name for a in config.accounts if a.api is Api.MESSAGES)


class ChatFromMessages:
    """``fronts.Translator``: an Anthropic stream in, a chat chunk stream out."""

    __slots__ = ("machine",)

    def __init__(self, machine: AnthropicToChat) -> None:
        self.machine = machine

    @property
    def content_started(self) -> bool:
        return self.machine.has_content

    @property
    def done(self) -> bool:
        return self.machine.done or self.machine.errored

    def take(self, items: list[Item]) -> bytes:
        return self.machine.feed_sse(items)

    def end(self, clean: bool) -> bytes:
        return self.machine.end(clean)

    def cut(self, error: UpstreamError) -> bytes:
        return self.machine.fail(error.message, error.status)

    def failure(self) -> tuple[int, bytes] | None:
        machine = self.machine
        if not machine.errored or machine.error_payload is None:
            return None
        return machine.error_status or 502, machine.error_payload


async def chat_answer(
    request: ClientSide, config: Config, answer: UpstreamAnswer, call: Call
) -> Answer:
    """A chat client's answer from an Anthropic account (``answer.make_answer``'s
    contract)."""
    created = int(time.time())
    if call.wants.stream:
        machine = AnthropicToChat(created, call.wants.client_usage, None)
        done = await translate_stream(request, config, answer, call, ChatFromMessages(machine))
        return done.reply, usage_from(machine.usage), done.early
    data = await _whole(config, answer)
    message = _message(data)
    if message is None:
        return _refused(call, answer, data)
    completion = message_to_completion(message, created)
    body = mask(json.dumps(completion, ensure_ascii=False).encode(), answer.secrets)
    call.outcome.answered(200, len(body))
    call.started()
    return Reply(200, body, None, "application/json"), usage_from(completion.get("usage")), None


async def messages_answer(
    request: ClientSide, config: Config, answer: UpstreamAnswer, call: Call
) -> Answer:
    """A Messages client's answer from an Anthropic account, passed through."""
    if call.wants.stream:
        relay = MessagesRelay()
        done = await translate_stream(request, config, answer, call, relay)
        return done.reply, relay.usage, done.early
    data = await _whole(config, answer)
    message = _message(data)
    if message is None:
        return _refused(call, answer, data)
    body = mask(data, answer.secrets)
    call.outcome.answered(200, len(body))
    call.started()
    counted = chat_usage(message.get("usage"))
    tokens = counted["prompt_tokens"], counted["completion_tokens"]
    return Reply(200, body, None, "application/json"), tokens, None


def _refused(call: Call, answer: UpstreamAnswer, data: bytes) -> Answer:
    """An Anthropic error body (its type names the status) as OpenAI's, before anything
    reached the client."""
    _, payload = to_openai(data, answer.response.status)
    reply, early = early_error(call, payload, answer.secrets)
    return reply, None, early


async def _whole(config: Config, answer: UpstreamAnswer) -> bytes:
    limit = config.server.max_event_bytes * 8
    return await read_body(answer.response, limit, config.timeouts_for(answer.account))


def _message(data: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict) or obj.get("type") != "message":
        return None
    return obj
