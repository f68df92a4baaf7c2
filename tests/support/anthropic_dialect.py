"""The SDKs as judges of what the Anthropic translators write, and the chat streams
they are fed.

anthropic-python's own SSE decoder, ``Stream`` and ``MessageStream`` accumulator read
the Messages streams seamline writes; openai-python's ``Stream`` reads the chat
streams it writes from Anthropic upstreams. Each is driven over an httpx2 response
built from bytes, the way the SDK drives its own responses, with no network.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterable
from typing import Any

import anthropic
import httpx2
import openai
from anthropic._streaming import Stream as AnthropicStream
from anthropic._types import not_given
from anthropic.lib.streaming import MessageStream
from anthropic.types import Message, RawMessageStreamEvent
from hypothesis import strategies as st
from openai._streaming import Stream as OpenAIStream
from openai.types.chat import ChatCompletionChunk

from proxy.core.dialects.anthropic_events import Event, encode
from proxy.core.dialects.anthropic_stream import ChatToAnthropic
from proxy.core.sse import Reframer
from support.builders import chunk_object, sse_of, usage

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


UPSTREAM_MODEL = "upstream-model"


def chunk(
    delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any
) -> dict[str, Any]:
    """One chat.completion.chunk with one choice, from the upstream's model."""
    return chunk_object(delta, finish, **{"model": UPSTREAM_MODEL, **extra})


def usage_chunk(prompt: int, completion: int, cached: int = 0) -> dict[str, Any]:
    """The chunk that carries the usage (no choices)."""
    return chunk(choices=[], usage=usage(prompt, completion, cached))


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
    return encode(translate([sse_of(chunks, done)], clean=clean))


# -- properties --------------------------------------------------------------------

_words = st.text(alphabet=string.ascii_letters + ' \n"\\é☃', min_size=1, max_size=6)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=5,
)
_arguments = st.dictionaries(st.text(max_size=4), _json, max_size=3)


@st.composite
def chat_streams(draw: st.DrawFn) -> tuple[list[Any], dict[str, Any]]:
    """A chat stream of text, reasoning and interleaved tool calls, and what it meant."""
    sources: list[list[dict[str, Any]]] = []
    for kind in draw(st.lists(st.sampled_from(["text", "reasoning", "tool"]), max_size=6)):
        if kind == "tool":
            n = len(sources)
            text = json.dumps(draw(_arguments))
            cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=3)))
            pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
            ops = [{"tool": n, "arguments": p} for p in pieces]
            ops[0].update(id=f"call_{n}", name=f"tool_{n}")
            sources.append(ops)
        else:
            key = "content" if kind == "text" else "reasoning_content"
            sources.append([{key: draw(_words)}])
    labels = [i for i, ops in enumerate(sources) for _ in ops]
    order = draw(st.permutations(labels))
    taken = [0] * len(sources)
    chunks: list[Any] = [chunk({"role": "assistant", "content": ""})]
    meant: dict[str, Any] = {"text": "", "thinking": "", "tools": {}, "order": []}
    for label in order:
        op = sources[label][taken[label]]
        taken[label] += 1
        if "tool" in op:
            piece: dict[str, Any] = {
                "index": op["tool"],
                "function": {"arguments": op["arguments"]},
            }
            if "id" in op:
                piece.update(id=op["id"], type="function")
                piece["function"]["name"] = op["name"]
                meant["order"].append(op["id"])
                meant["tools"][op["id"]] = [op["name"], ""]
            meant["tools"][f"call_{op['tool']}"][1] += op["arguments"]
            chunks.append(chunk({"tool_calls": [piece]}))
        else:
            chunks.append(chunk(op))
            meant["text" if "content" in op else "thinking"] += op.get("content") or op.get(
                "reasoning_content", ""
            )
    finish = "tool_calls" if meant["tools"] else draw(st.sampled_from(["stop", "length"]))
    chunks.append(chunk(finish=finish))
    prompt, completion, cached = draw(
        st.tuples(st.integers(0, 99), st.integers(0, 99), st.integers(0, 9))
    )
    chunks.append(usage_chunk(prompt + cached, completion, cached))
    meant["usage"] = (prompt, cached, completion)
    return chunks, meant
