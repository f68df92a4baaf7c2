"""Builders and judges for the Responses dialect's tests.

openai-python is the judge: translated events are encoded to SSE bytes and read back
by the SDK's own client over an in-memory transport (its SSE decoder, its Stream, its
``ResponseStreamState`` accumulator), and every event and ``response`` object is also
validated strictly against the SDK's pydantic types.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, get_args

import httpx2
import openai
from hypothesis import strategies as st
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import BaseModel

from proxy.core.dialects.responses_common import sequential_ids
from proxy.core.dialects.responses_request import ChatRequest, translate_request
from proxy.core.dialects.responses_stream import ChatToResponses
from support.builders import chunk_object

# The SDK's union marks its discriminator in its own way, so pydantic would try its
# sixty members in turn: validating against the member ``type`` names is much faster.
EVENT_TYPES: dict[str, type[BaseModel]] = {
    member.model_fields["type"].annotation.__args__[0]: member
    for member in get_args(get_args(ResponseStreamEvent)[0])
}
USAGE = {
    "prompt_tokens": 11,
    "completion_tokens": 7,
    "total_tokens": 18,
    "prompt_tokens_details": {"cached_tokens": 4},
    "completion_tokens_details": {"reasoning_tokens": 3},
}
TOOLS: list[dict[str, Any]] = [
    {"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}},
    {"type": "function", "name": "g", "description": "gee"},
    {"type": "custom", "name": "apply_patch", "description": "Apply a patch."},
    {
        "type": "namespace",
        "name": "ns",
        "description": "A group.",
        "tools": [{"type": "function", "name": "do", "parameters": {"type": "object"}}],
    },
    {"type": "web_search"},
]


def chat_request(**body: Any) -> ChatRequest:
    return translate_request({"model": "m", "input": "hi", "stream": True, **body})


REQUEST = chat_request(tools=TOOLS)


def translator(request: ChatRequest = REQUEST) -> ChatToResponses:
    return ChatToResponses(
        request, response_id="resp_test", created_at=1700000000, ids=sequential_ids("t")
    )


UPSTREAM_MODEL = "up-model"


def chunk(
    delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any
) -> dict[str, Any]:
    """One chat.completion.chunk with one choice, from the upstream's model."""
    return chunk_object(delta, finish, **{"model": UPSTREAM_MODEL, **extra})


def usage_chunk(usage: dict[str, Any] | None = None) -> dict[str, Any]:
    """The chunk that carries the usage (no choices)."""
    return chunk(choices=[], usage=usage or USAGE)


def run(
    chunks: Sequence[dict[str, Any]], request: ChatRequest = REQUEST, end: bool | None = True
) -> list[dict[str, Any]]:
    """Every event a translator makes for ``chunks``; ``end`` None: no end call."""
    t = translator(request)
    events = [e for c in chunks for e in t.feed(c)]
    if end is not None:
        events += t.end(clean=end)
    return events


def client(body: bytes, content_type: str = "text/event-stream") -> openai.OpenAI:
    """An OpenAI client whose every request is answered with ``body``."""

    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": content_type}, content=body)

    http = httpx2.Client(transport=httpx2.MockTransport(answer))
    return openai.OpenAI(
        api_key="sk-test", base_url="http://seamline.invalid/v1", http_client=http, max_retries=0
    )


@dataclass
class SdkRead:
    """What openai-python made of a stream."""

    events: list[Any]  # the raw events responses.create(stream=True) yields
    helper_events: list[Any]  # what responses.stream() yields
    final: Any  # the accumulated ParsedResponse, None without response.completed


def sdk_read(body: bytes, tools: Any = None) -> SdkRead:
    with client(body) as c:
        raw = list(c.responses.create(model="m", input="hi", stream=True))
        kwargs: dict[str, Any] = {"tools": tools} if tools else {}
        with c.responses.stream(model="m", input="hi", **kwargs) as stream:
            helper = list(stream)
            final = stream._state._completed_response
    return SdkRead(raw, helper, final)


def validate(events: Sequence[dict[str, Any]]) -> None:
    """Every event (and the response object inside) validates as the SDK's type."""
    for event in events:
        # A lifecycle event's model validates its whole response as a Response.
        parsed = EVENT_TYPES[event["type"]].model_validate(event)
        if "response" in event:
            assert isinstance(getattr(parsed, "response", None), Response)


@dataclass
class Outline:
    """What a stream's events say, item by item, for comparing with what was meant."""

    text: str = ""
    refusal: str = ""
    reasoning: str = ""
    calls: list[tuple[str, str, str, str | None]] = field(
        default_factory=list
    )  # type, id, name, args/input
    terminal: str = ""


def check_well_formed(events: Sequence[dict[str, Any]]) -> Outline:
    """Assert the nesting and numbering rules every Responses stream must keep, and
    return what the deltas reconstruct (which must equal what the done events say)."""
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events[:2]] == ["response.created", "response.in_progress"]
    terminals = {"response.completed", "response.incomplete", "response.failed"}
    assert events[-1]["type"] in terminals
    assert sum(e["type"] in terminals for e in events) == 1
    items: dict[int, dict[str, Any]] = {}  # output_index -> state
    out = Outline(terminal=events[-1]["type"])
    for e in events[2:-1]:
        kind = e["type"]
        if kind == "response.output_item.added":
            assert e["output_index"] == len(items), "output indexes count up from 0"
            items[e["output_index"]] = {
                "item": e["item"],
                "open": True,
                "parts": {},
                "text": {},
                "id": e["item"].get("id"),
            }
            continue
        if kind == "error":
            assert events[-1]["type"] == "response.failed"
            continue
        state = items[e["output_index"]]
        assert state["open"], f"{kind} after its item closed"
        if "item_id" in e:
            assert e["item_id"] == state["id"]
        key = e.get("content_index", e.get("summary_index", 0))
        if kind in ("response.content_part.added", "response.reasoning_summary_part.added"):
            assert key not in state["parts"]
            state["parts"][key] = True
            state["text"][key] = ""
        elif kind.endswith(".delta"):
            if "content_index" in e or "summary_index" in e:
                assert state["parts"].get(key), f"{kind} outside an open part"
            state["text"][key] = state["text"].get(key, "") + e["delta"]
        elif kind in ("response.content_part.done", "response.reasoning_summary_part.done"):
            assert state["parts"].get(key)
            state["parts"][key] = False
        elif kind in (
            "response.output_text.done",
            "response.refusal.done",
            "response.reasoning_summary_text.done",
        ):
            assert state["parts"].get(key)
            assert e.get("text", e.get("refusal")) == state["text"][key]
        elif kind == "response.function_call_arguments.done":
            assert e["arguments"] == state["text"].get(0, "")
        elif kind == "response.custom_tool_call_input.done":
            assert e["input"] == state["text"].get(0, "")
        elif kind == "response.output_item.done":
            assert not any(state["parts"].values()), "a part left open in a closed item"
            state["open"] = False
            state["done"] = e["item"]
            assert e["item"]["type"] == state["item"]["type"]
            assert e["item"].get("id") == state["id"]
        else:
            raise AssertionError(f"unexpected event {kind}")
    if out.terminal != "response.failed":
        assert not any(s["open"] for s in items.values()), "an item left open at the end"
    final_output = events[-1]["response"]["output"]
    assert len(final_output) == len(items)
    for index in sorted(items):
        state = items[index]
        item = state.get("done", final_output[index])
        if out.terminal != "response.failed":
            assert final_output[index] == item
        kind = item["type"]
        if kind == "message":
            for part in item["content"]:
                if part["type"] == "output_text":
                    out.text += part["text"]
                else:
                    out.refusal += part["refusal"]
        elif kind == "reasoning":
            out.reasoning += "".join(s["text"] for s in item["summary"])
        elif kind == "function_call":
            out.calls.append((kind, item["call_id"], item["name"], item["arguments"]))
        elif kind == "custom_tool_call":
            out.calls.append((kind, item["call_id"], item["name"], item["input"]))
    return out


def pieces(data: bytes, cuts: Sequence[int]) -> Iterator[bytes]:
    """``data`` cut at the given offsets (any order, any repeats)."""
    last = 0
    for cut in sorted({c % (len(data) + 1) for c in cuts}):
        yield data[last:cut]
        last = cut
    yield data[last:]


def call(index: int, args: str, id: str | None = None, name: str | None = None) -> dict[str, Any]:
    fn: dict[str, Any] = {"arguments": args}
    if name is not None:
        fn["name"] = name
    out: dict[str, Any] = {"index": index, "function": fn}
    if id is not None:
        out.update(id=id, type="function")
    return out


CALL_NAMES = ("f", "g", "apply_patch", "ns__do")


@dataclass
class Answer:
    """A model's answer and the chat chunks an upstream streamed it in."""

    chunks: list[dict[str, Any]]
    text: str
    reasoning: str
    calls: list[tuple[str, str, str, str]]  # item type, call id, name, args or input
    finish: str
    usage: bool

    @property
    def terminal(self) -> str:
        return (
            "response.incomplete"
            if self.finish in ("length", "content_filter")
            else "response.completed"
        )


def _split(draw: st.DrawFn, text: str) -> list[str]:
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=4)))
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds) if b > a] or ([text] if text else [])


@st.composite
def answers(draw: st.DrawFn) -> Answer:
    text = draw(st.text(max_size=30))
    reasoning = draw(st.text(max_size=20))
    calls: list[tuple[str, str, str, str]] = []
    streams: list[list[tuple[str, Any]]] = [
        [("content", p) for p in _split(draw, text)],
        [("reasoning_content", p) for p in _split(draw, reasoning)],
    ]
    for i in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(CALL_NAMES))
        if name == "apply_patch":
            payload = draw(st.text(max_size=25))
            args = json.dumps({"input": payload}, ensure_ascii=draw(st.booleans()))
            calls.append(("custom_tool_call", f"call_{i}", name, payload))
        else:
            value = draw(
                st.dictionaries(
                    st.text(max_size=4), st.integers() | st.text(max_size=6), max_size=3
                )
            )
            args = json.dumps(value, ensure_ascii=draw(st.booleans()))
            shown = "do" if name == "ns__do" else name
            calls.append(("function_call", f"call_{i}", shown, args))
        parts = _split(draw, args) or [""]
        stream = [("tool", call(i, parts[0], f"call_{i}", name))]
        stream += [("tool", call(i, p)) for p in parts[1:]]
        streams.append(stream)
    # Interleave the streams, each in its own order.
    order: list[tuple[str, Any]] = []
    while any(streams):
        live = [s for s in streams if s]
        order.append(draw(st.sampled_from(live)).pop(0))
    chunks: list[dict[str, Any]] = [chunk({"role": "assistant", "content": ""})]
    for kind, value in order:
        merge = chunks[-1]["choices"][0]["delta"] if draw(st.booleans()) else None
        delta = merge if merge is not None and kind not in merge else {}
        if kind == "tool":
            delta.setdefault("tool_calls", []).append(value)
        else:
            delta[kind] = value
        if delta is not merge:
            chunks.append(chunk(delta))
    finish = "tool_calls" if calls else draw(st.sampled_from(["stop", "length", "content_filter"]))
    usage = draw(st.sampled_from(["chunk", "on_finish", "none"]))
    chunks.append(chunk({}, finish, **({"usage": USAGE} if usage == "on_finish" else {})))
    if usage == "chunk":
        chunks.append(usage_chunk())
    # Items are in the order the calls first appeared.
    first_seen = [v["id"] for kind, v in order if kind == "tool" and "id" in v]
    calls.sort(key=lambda c: first_seen.index(c[1]))
    return Answer(chunks, text, reasoning, calls, finish, usage != "none")
