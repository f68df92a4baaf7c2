"""The SDKs as judges of what the Anthropic translators write.

anthropic-python's own SSE decoder, ``Stream`` and ``MessageStream`` accumulator read
the Messages streams seamline writes; openai-python's ``Stream`` reads the chat
streams it writes from Anthropic upstreams. Each is driven over an httpx2 response
built from bytes, the way the SDK drives its own responses, with no network.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import anthropic
import httpx2
import openai
from anthropic._streaming import Stream as AnthropicStream
from anthropic._types import not_given
from anthropic.lib.streaming import MessageStream
from anthropic.types import Message, RawMessageStreamEvent
from openai._streaming import Stream as OpenAIStream
from openai.types.chat import ChatCompletionChunk

from proxy.core.dialects.anthropic_events import Event, encode
from proxy.core.dialects.anthropic_stream import ChatToAnthropic
from proxy.core.sse import Reframer

# One client each for the whole run: making one costs ~50 ms, and none opens a socket.
_ANTHROPIC = anthropic.Anthropic(api_key="sk-ant-test", base_url="http://upstream.invalid")
_OPENAI = openai.OpenAI(api_key="sk-test", base_url="http://upstream.invalid/v1")


def _response(body: bytes, path: str) -> httpx2.Response:
    request = httpx2.Request("POST", f"http://upstream.invalid{path}")
    headers = {"content-type": "text/event-stream"}
    return httpx2.Response(200, content=body, request=request, headers=headers)


def raw_events(body: bytes) -> list[RawMessageStreamEvent]:
    """The events anthropic-python's ``Stream`` yields for ``body`` (pings skipped, an
    ``error`` event raised as its ``APIStatusError``)."""
    stream: AnthropicStream[RawMessageStreamEvent] = AnthropicStream(
        cast_to=RawMessageStreamEvent,  # type: ignore[arg-type]  # a union, as the SDK's own
        response=_response(body, "/v1/messages"),
        client=_ANTHROPIC,
    )
    return list(stream)


def final_message(body: bytes) -> Message:
    """What ``MessageStream.get_final_message()`` accumulates from ``body``."""
    raw: AnthropicStream[RawMessageStreamEvent] = AnthropicStream(
        cast_to=RawMessageStreamEvent,  # type: ignore[arg-type]
        response=_response(body, "/v1/messages"),
        client=_ANTHROPIC,
    )
    stream: MessageStream[Any] = MessageStream(raw, output_format=not_given)
    return stream.get_final_message()


def chat_chunks(body: bytes) -> list[ChatCompletionChunk]:
    """What openai-python's ``Stream`` yields for ``body``; raises its ``APIError``."""
    stream = OpenAIStream(
        cast_to=ChatCompletionChunk, response=_response(body, "/v1/chat/completions"),
        client=_OPENAI,
    )  # fmt: skip
    return list(stream)


def chat_sse(chunks: Iterable[Any], done: bool = True) -> bytes:
    """Chat chunks as an upstream's SSE bytes."""
    out = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
    return out + (b"data: [DONE]\n\n" if done else b"")


def chunk(
    delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any
) -> dict[str, Any]:
    """One chat.completion.chunk with one choice."""
    choice = {"index": 0, "delta": delta or {}, "finish_reason": finish}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "upstream-model",
        "choices": [choice],
        **extra,
    }


def usage_chunk(prompt: int, completion: int, cached: int = 0) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [], "usage": usage}


def translate(
    pieces: Iterable[bytes], translator: ChatToAnthropic | None = None, clean: bool = True
) -> list[Event]:
    """Upstream reads through a reframer and a translator, then the upstream's end."""
    t = translator or ChatToAnthropic("claude-test", message_id="msg_test")
    r = Reframer()
    out: list[Event] = []
    for piece in pieces:
        out += t.feed_sse(r.feed(piece))
    out += t.feed_sse(r.close())
    return out + t.end(clean)


def stream_bytes(*chunks: Any, clean: bool = True, done: bool = True) -> bytes:
    """The Messages stream seamline writes for these chat chunks."""
    return encode(translate([chat_sse(chunks, done)], clean=clean))
