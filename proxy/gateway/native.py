"""Accounts that speak the Responses API (``api = "responses"``) behind both routes.

A chat client's request for such an account goes to its /v1/responses as a Responses
request (``core/dialects/native_request``), and its answer comes back as chat chunks
(``ResponsesToChat``) or one ``chat.completion``; a Responses client's request goes
there as it came, its events passed through (``native_relay``). Either way, as on the
chat route: nothing reaches the client before the upstream's first content or error
(another account may still take it), and a stream that stops early ends with an error,
never a completion.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from proxy.config import Api, Config
from proxy.core.dialects.native_relay import ResponsesRelay
from proxy.core.dialects.native_stream import ResponsesToChat, chat_sse, response_to_completion
from proxy.core.dialects.responses_common import UpstreamFailure
from proxy.core.openai import DONE_EVENT, usage_from
from proxy.core.sse import Item
from proxy.errors import UpstreamError
from proxy.gateway.attempt import UpstreamAnswer
from proxy.gateway.context import Call
from proxy.gateway.fronts import early_error, translate_stream
from proxy.gateway.relay import ClientSide
from proxy.gateway.reply import Reply
from proxy.logs import mask
from proxy.upstream.call import read_body


def speaks_responses(answer: UpstreamAnswer) -> bool:
    return answer.account.api is Api.RESPONSES


def responses_accounts(config: Config) -> tuple[str, ...]:
    return tuple(a.name for a in config.accounts if a.api is Api.RESPONSES)


def chat_accounts(config: Config) -> tuple[str, ...]:
    return tuple(a.name for a in config.accounts if a.api is not Api.RESPONSES)


class ChatFromResponses:
    """``fronts.Translator``: a Responses stream in, a chat chunk stream out."""

    __slots__ = ("machine",)

    def __init__(self, include_usage: bool, model: str) -> None:
        self.machine = ResponsesToChat(include_usage=include_usage, model=model)

    @property
    def content_started(self) -> bool:
        return self.machine.committed

    @property
    def done(self) -> bool:
        return self.machine.done

    def take(self, items: list[Item]) -> bytes:
        return self._sse(self.machine.feed_items(items))

    def end(self, clean: bool) -> bytes:
        return self._sse(self.machine.end(clean))

    def cut(self, error: UpstreamError) -> bytes:
        failure = UpstreamFailure(error.message, error.code, status=error.status)
        return self._sse(self.machine.fail(failure))

    def _sse(self, chunks: list[Any]) -> bytes:
        out = chat_sse(chunks)
        if chunks and self.machine.done and not self.machine.failed:
            out += DONE_EVENT
        return out

    def failure(self) -> tuple[int, bytes] | None:
        failed = self.machine.failure
        if failed is None:
            return None
        return failed.status, json.dumps(failed.chat_error()).encode()


# Where a finished response goes to be stored (None: nothing to store).
Keep = Callable[[dict[str, Any] | None], Awaitable[None]]
Answer = tuple[Reply, tuple[int, int] | None, tuple[int, bytes] | None]


async def chat_answer(
    request: ClientSide, config: Config, answer: UpstreamAnswer, call: Call
) -> Answer:
    """A chat client's answer from a Responses account (``answer.make_answer``'s
    contract: the reply, its usage, and (status, error) when it failed before anything
    reached the client)."""
    wants = call.wants
    if wants.stream:
        translator = ChatFromResponses(wants.client_usage, call.model or "")
        done = await translate_stream(request, config, answer, call, translator)
        return done.reply, translator.machine.usage, done.early
    data = await _whole(config, answer)
    response = _object(data)
    if response is None:
        return _early(call, data, answer.secrets)
    made = response_to_completion(response)
    if made.status != 200:
        return _early(call, json.dumps(made.body).encode(), answer.secrets)
    body = mask(json.dumps(made.body, ensure_ascii=False).encode(), answer.secrets)
    call.outcome.answered(200, len(body))
    call.started()
    return Reply(200, body, None, "application/json"), usage_from(response.get("usage")), None


async def responses_stream(
    request: ClientSide, config: Config, answer: UpstreamAnswer, call: Call, keep: Keep
) -> tuple[Reply, tuple[int, bytes] | None, dict[str, Any] | None]:
    """A Responses client's stream from a Responses account: the reply, (status, error)
    when it failed before anything reached the client, and the final response (given
    to ``keep`` before the client reads its end)."""
    relay = ResponsesRelay()
    done = await translate_stream(
        request, config, answer, call, relay, before_end=lambda: keep(relay.final)
    )
    return done.reply, done.early, relay.final


async def responses_whole(
    config: Config, answer: UpstreamAnswer, call: Call
) -> tuple[Reply, tuple[int, bytes] | None, dict[str, Any] | None]:
    """A Responses client's whole answer from a Responses account, as it came."""
    data = await _whole(config, answer)
    response = _object(data)
    if response is None or response.get("status") == "failed":
        error = data if response is None else json.dumps({"error": response.get("error")})
        reply, early = early_error(call, error.encode() if isinstance(error, str) else error,
                                   answer.secrets)  # fmt: skip
        return reply, early, None
    body = mask(data, answer.secrets)
    call.outcome.answered(200, len(body))
    call.started()
    return Reply(200, body, None, "application/json"), None, response


async def _whole(config: Config, answer: UpstreamAnswer) -> bytes:
    limit = config.server.max_event_bytes * 8
    return await read_body(answer.response, limit, config.timeouts_for(answer.account))


def _object(data: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict) or obj.get("error") or obj.get("object") not in ("response", None):
        return None
    return obj


def _early(call: Call, error: bytes, secrets: tuple[bytes, ...]) -> Answer:
    reply, early = early_error(call, error, secrets)
    return reply, None, early
