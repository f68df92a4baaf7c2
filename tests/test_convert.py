"""JSON <-> SSE: a completion as the stream it would have been, and a stream merged back.

Every stream completion_to_sse writes is read back with openai-python's own SSE
decoder, so "the SDK parses it" is checked by the SDK rather than by our reading of it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai._streaming import ServerSentEvent, SSEDecoder

from proxy.core.convert import Aggregator, completion_to_sse
from proxy.core.openai import DONE_EVENT
from proxy.core.shaper import OpenAIShaper
from proxy.core.sse import Reframer

USAGE = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}


def sdk_events(body: bytes) -> list[ServerSentEvent]:
    """The events openai-python's decoder sees in ``body``."""
    return list(SSEDecoder().iter_bytes(iter([body])))


def payloads(body: bytes) -> list[Any]:
    """Every event's JSON, checked the way the SDK reads it: [DONE] last, nothing else."""
    events = sdk_events(body)
    assert events, body
    assert events[-1].data == "[DONE]"
    for sse in events:
        assert sse.event is None
        assert sse.id is None
        assert sse.retry is None
    return [sse.json() for sse in events[:-1]]


def aggregate(body: bytes) -> dict[str, Any]:
    agg = Aggregator()
    for obj in payloads(body):
        agg.add(obj)
    return agg.result()


def chunk(*choices: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": list(choices),
        **extra,
    }


def delta(index: int = 0, finish: str | None = None, **fields: Any) -> dict[str, Any]:
    return {"index": index, "delta": fields, "finish_reason": finish}


def merge(*chunks: Any) -> dict[str, Any]:
    agg = Aggregator()
    for c in chunks:
        agg.add(c)
    return agg.result()


COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-9",
    "object": "chat.completion",
    "created": 7,
    "model": "m",
    "system_fingerprint": "fp_1",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Hi é 😀\nline two",
                "reasoning_content": "let me think",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "get_time", "arguments": "{}"},
                    },
                ],
            },
            "finish_reason": "tool_calls",
        }
    ],
    "usage": USAGE,
}


# --- completion_to_sse -----------------------------------------------------------------


def test_completion_becomes_role_and_content_then_finish_then_done() -> None:
    body = completion_to_sse(COMPLETION, include_usage=False)
    first, last = payloads(body)
    assert first["object"] == "chat.completion.chunk"
    assert first["id"] == "chatcmpl-9"
    assert first["system_fingerprint"] == "fp_1"
    d = first["choices"][0]["delta"]
    assert d["role"] == "assistant"
    assert d["content"] == "Hi é 😀\nline two"
    assert d["reasoning_content"] == "let me think"
    assert [c["index"] for c in d["tool_calls"]] == [0, 1]
    assert first["choices"][0]["finish_reason"] is None
    assert last["choices"] == [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]
    assert body.endswith(b"\n\n" + DONE_EVENT)


def test_usage_chunk_only_when_the_client_asked_for_it() -> None:
    without = payloads(completion_to_sse(COMPLETION, include_usage=False))
    assert all("usage" not in p for p in without)
    with_usage = payloads(completion_to_sse(COMPLETION, include_usage=True))
    assert len(with_usage) == len(without) + 1
    assert with_usage[-1]["choices"] == []
    assert with_usage[-1]["usage"] == USAGE
    no_usage = {k: v for k, v in COMPLETION.items() if k != "usage"}
    assert len(payloads(completion_to_sse(no_usage, include_usage=True))) == len(without)


def test_completion_round_trips_through_the_aggregator() -> None:
    out = aggregate(completion_to_sse(COMPLETION, include_usage=True))
    assert out == COMPLETION


def test_text_completion_round_trips() -> None:
    body = {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 3,
        "model": "davinci",
        "choices": [
            {"index": 0, "text": "Hello", "finish_reason": "length", "logprobs": None},
            {"index": 1, "text": "", "finish_reason": "stop", "logprobs": None},
        ],
        "usage": USAGE,
    }
    sse = completion_to_sse(body, include_usage=True)
    assert all(p["object"] == "text_completion" for p in payloads(sse))
    out = aggregate(sse)
    assert out["object"] == "text_completion"
    assert [(c["index"], c["text"], c["finish_reason"]) for c in out["choices"]] == [
        (0, "Hello", "length"),
        (1, "", "stop"),
    ]
    assert out["usage"] == USAGE


def test_output_is_already_what_seamline_would_send() -> None:
    """Rendering the stream through the reframer and shaper changes nothing."""
    sse = completion_to_sse(COMPLETION, include_usage=True)
    shaper = OpenAIShaper()
    reframer = Reframer()
    again = shaper.render(reframer.feed(sse)) + shaper.render(reframer.close()) + shaper.finish()
    assert again == sse
    assert not shaper.repairs
    assert shaper.usage == (3, 5)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"choices": []},
        {"choices": ["not a dict", None]},
        {"choices": [{"message": None, "finish_reason": "stop"}]},
    ],
)
def test_empty_or_odd_bodies_still_give_a_parsable_stream(body: dict[str, Any]) -> None:
    sse = completion_to_sse(body, include_usage=True)
    assert sse.endswith(DONE_EVENT)
    payloads(sse)


# --- Aggregator -------------------------------------------------------------------------


def test_content_and_reasoning_are_concatenated_in_order() -> None:
    out = merge(
        chunk(delta(role="assistant", content="")),
        chunk(delta(reasoning_content="let ")),
        chunk(delta(reasoning_content="me think")),
        chunk(delta(content="Hel")),
        chunk(delta(content="lo")),
        chunk(delta(finish="stop")),
    )
    msg = out["choices"][0]["message"]
    assert msg == {"role": "assistant", "content": "Hello", "reasoning_content": "let me think"}
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["object"] == "chat.completion"
    assert (out["id"], out["created"], out["model"]) == ("chatcmpl-1", 1, "m")
    assert "usage" not in out


def test_tool_calls_merge_by_index_with_id_and_name_once() -> None:
    calls = [
        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather"}},
        {"index": 0, "function": {"arguments": '{"ci'}},
        {"index": 1, "id": "call_2", "type": "function", "function": {"name": "get_time"}},
        {"index": 0, "function": {"arguments": 'ty":"Pa'}},
        {"index": 1, "function": {"arguments": "{}"}},
        {"index": 0, "function": {"arguments": 'ris"}'}},
    ]
    out = merge(*(chunk(delta(tool_calls=[c])) for c in calls), chunk(delta(finish="tool_calls")))
    msg = out["choices"][0]["message"]
    assert msg["content"] is None
    assert msg["tool_calls"] == COMPLETION["choices"][0]["message"]["tool_calls"]
    assert out["choices"][0]["finish_reason"] == "tool_calls"


def test_several_tool_calls_in_one_delta() -> None:
    out = merge(
        chunk(
            delta(
                tool_calls=[
                    {"index": 1, "id": "b", "function": {"name": "g", "arguments": "{}"}},
                    {"index": 0, "id": "a", "function": {"name": "f", "arguments": "{"}},
                ]
            )
        ),
        chunk(delta(tool_calls=[{"index": 0, "function": {"arguments": "}"}}])),
    )
    calls = out["choices"][0]["message"]["tool_calls"]
    assert [(c["id"], c["function"]["arguments"]) for c in calls] == [("a", "{}"), ("b", "{}")]


def test_tool_calls_without_an_index_are_told_apart_by_their_id() -> None:
    out = merge(
        chunk(delta(tool_calls=[{"id": "a", "function": {"name": "f", "arguments": "{"}}])),
        chunk(delta(tool_calls=[{"function": {"arguments": "}"}}])),
        chunk(delta(tool_calls=[{"index": None, "id": "b", "function": {"name": "g"}}])),
        chunk(delta(tool_calls=[{"index": None, "function": {"arguments": "{}"}}])),
    )
    calls = out["choices"][0]["message"]["tool_calls"]
    assert [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        ("a", "f", "{}"),
        ("b", "g", "{}"),
    ]


def test_tool_call_arguments_sent_as_an_object_become_a_json_string() -> None:
    out = merge(
        chunk(delta(tool_calls=[{"index": 0, "id": "a", "function": {"name": "f"}}])),
        chunk(delta(tool_calls=[{"index": 0, "function": {"arguments": {"city": "Paris"}}}])),
    )
    args = out["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    assert json.loads(args) == {"city": "Paris"}


def test_choices_merge_by_index_whatever_the_order() -> None:
    out = merge(
        chunk(delta(1, role="assistant", content="B")),
        chunk(delta(0, role="assistant", content="A")),
        chunk(delta(1, content="b"), delta(0, content="a")),
        chunk(delta(0, finish="stop")),
        chunk(delta(1, finish="length")),
    )
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in out["choices"]] == [
        (0, "Aa", "stop"),
        (1, "Bb", "length"),
    ]


def test_usage_only_in_the_last_chunk() -> None:
    out = merge(
        chunk(delta(content="a"), usage=None),
        chunk(delta(finish="stop"), usage=None),
        chunk(usage=USAGE),
    )
    assert out["usage"] == USAGE
    assert out["choices"][0]["message"]["content"] == "a"


def test_text_completion_chunks() -> None:
    def text(t: str, finish: str | None = None, index: int = 0) -> dict[str, Any]:
        return {
            "id": "cmpl-1",
            "object": "text_completion",
            "created": 2,
            "model": "davinci",
            "choices": [{"index": index, "text": t, "finish_reason": finish, "logprobs": None}],
        }

    out = merge(
        text("Hel"), text("x", index=1), text("lo"), text("", "stop"), text("", "length", 1)
    )
    assert out["object"] == "text_completion"
    assert out["choices"] == [
        {"index": 0, "text": "Hello", "finish_reason": "stop"},
        {"index": 1, "text": "x", "finish_reason": "length"},
    ]


def test_logprobs_are_concatenated_across_chunks() -> None:
    def lp(token: str) -> dict[str, Any]:
        return {"token": token, "logprob": -0.5, "bytes": list(token.encode()), "top_logprobs": []}

    out = merge(
        chunk({**delta(content="a"), "logprobs": {"content": [lp("a")], "refusal": None}}),
        chunk({**delta(content="b"), "logprobs": {"content": [lp("b")], "refusal": None}}),
        chunk(delta(finish="stop")),
    )
    assert out["choices"][0]["logprobs"] == {"content": [lp("a"), lp("b")], "refusal": None}


def test_text_completion_logprobs_are_concatenated() -> None:
    def text(t: str, offset: int) -> dict[str, Any]:
        logprobs = {
            "tokens": [t],
            "token_logprobs": [-0.1],
            "top_logprobs": [{t: -0.1}],
            "text_offset": [offset],
        }
        choice = {"index": 0, "text": t, "finish_reason": None, "logprobs": logprobs}
        return {"object": "text_completion", "choices": [choice]}

    out = merge(text("a", 0), text("b", 1))
    assert out["choices"][0]["logprobs"] == {
        "tokens": ["a", "b"],
        "token_logprobs": [-0.1, -0.1],
        "top_logprobs": [{"a": -0.1}, {"b": -0.1}],
        "text_offset": [0, 1],
    }


def test_head_comes_from_the_first_chunk_that_has_it() -> None:
    """Azure's first chunk carries only prompt_filter_results, with empty id and model."""
    azure_first = {
        "id": "",
        "object": "",
        "created": 0,
        "model": "",
        "choices": [],
        "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}],
    }
    out = merge(azure_first, chunk(delta(content="a")), chunk(delta(finish="stop")))
    assert (out["id"], out["created"], out["model"]) == ("chatcmpl-1", 1, "m")
    assert out["object"] == "chat.completion"


def test_legacy_function_call_is_merged_and_streamed() -> None:
    out = merge(
        chunk(delta(role="assistant", function_call={"name": "f", "arguments": ""})),
        chunk(delta(function_call={"arguments": '{"a"'})),
        chunk(delta(function_call={"arguments": ":1}"})),
        chunk(delta(finish="function_call")),
    )
    msg = out["choices"][0]["message"]
    assert msg["function_call"] == {"name": "f", "arguments": '{"a":1}'}
    body = {**out, "object": "chat.completion"}
    assert aggregate(completion_to_sse(body, include_usage=False)) == out


def test_garbage_is_ignored() -> None:
    out = merge(
        None,
        "text",
        [1],
        {"choices": "nope"},
        {"choices": [1, None, {"index": [0], "delta": "x"}]},
        chunk({"index": 0, "delta": None}),
        chunk({"index": "0", "delta": {"content": "a"}}),
        chunk({"index": 0, "delta": {"tool_calls": [None, {"index": {}, "function": None}]}}),
        chunk(delta(content="b")),
    )
    assert [c["index"] for c in out["choices"]] == [0]
    msg = out["choices"][0]["message"]
    assert msg["role"] == "assistant"
    assert msg["content"] == "ab"


def test_empty_aggregate_is_still_a_completion() -> None:
    assert merge() == {
        "id": "",
        "object": "chat.completion",
        "created": 0,
        "model": "",
        "choices": [],
    }


def test_finished() -> None:
    agg = Aggregator()
    agg.add(chunk(delta(content="a")))
    assert not agg.finished
    agg.add(chunk(delta(finish="stop")))
    assert agg.finished


# --- properties ---------------------------------------------------------------------------

TEXT = st.text(max_size=12)
OPTIONAL_TEXT = st.none() | TEXT
FINISH = st.sampled_from(["stop", "length", "tool_calls", "content_filter", None])


@st.composite
def tool_call(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "id": draw(st.text(min_size=1, max_size=8)),
        "type": "function",
        "function": {"name": draw(TEXT), "arguments": draw(TEXT)},
    }


@st.composite
def chat_choice(draw: st.DrawFn, index: int) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": draw(OPTIONAL_TEXT)}
    for key in ("reasoning_content", "refusal"):
        value = draw(OPTIONAL_TEXT)
        if value is not None:
            message[key] = value
    calls = draw(st.lists(tool_call(), max_size=3))
    if calls:
        message["tool_calls"] = calls
    choice: dict[str, Any] = {"index": index, "message": message, "finish_reason": draw(FINISH)}
    if draw(st.booleans()):
        choice["logprobs"] = {"content": [], "refusal": None}
    return choice


@st.composite
def text_choice(draw: st.DrawFn, index: int) -> dict[str, Any]:
    return {"index": index, "text": draw(TEXT), "finish_reason": draw(FINISH)}


@st.composite
def completion(draw: st.DrawFn) -> dict[str, Any]:
    chat = draw(st.booleans())
    n = draw(st.integers(0, 3))
    make = chat_choice if chat else text_choice
    body: dict[str, Any] = {
        "id": draw(TEXT),
        "object": "chat.completion" if chat else "text_completion",
        "created": draw(st.integers(0, 2**31)),
        "model": draw(TEXT),
        "choices": [draw(make(i)) for i in range(n)],
    }
    if draw(st.booleans()):
        body["system_fingerprint"] = draw(TEXT)
    if draw(st.booleans()):
        body["usage"] = {
            "prompt_tokens": draw(st.integers(0, 10**6)),
            "completion_tokens": draw(st.integers(0, 10**6)),
            "total_tokens": draw(st.integers(0, 10**6)),
        }
    return body


def _expected(body: dict[str, Any], include_usage: bool) -> dict[str, Any]:
    """What the round trip keeps: everything, but usage only when it was streamed."""
    out = {k: v for k, v in body.items() if k != "usage" or include_usage}
    if not body["choices"] and "usage" not in out:
        # No chunk at all: nothing to take the id, model or object from.
        out.update(id="", created=0, model="", object="chat.completion")
        out.pop("system_fingerprint", None)
    elif not out.get("system_fingerprint"):
        out.pop("system_fingerprint", None)  # an empty value is no value
    return out


@settings(max_examples=300, deadline=None)
@given(completion(), st.booleans())
def test_any_completion_round_trips_through_sse_and_the_aggregator(
    body: dict[str, Any], include_usage: bool
) -> None:
    sse = completion_to_sse(body, include_usage)
    assert aggregate(sse) == _expected(body, include_usage)


@settings(max_examples=300, deadline=None)
@given(completion(), st.booleans(), st.data())
def test_any_completion_stream_parses_with_the_sdk_split_anywhere(
    body: dict[str, Any], include_usage: bool, data: st.DataObject
) -> None:
    sse = completion_to_sse(body, include_usage)
    whole = [(e.event, e.data) for e in sdk_events(sse)]
    cut = data.draw(st.integers(0, len(sse)))
    split = SSEDecoder().iter_bytes(iter([sse[:cut], sse[cut:]]))
    assert [(e.event, e.data) for e in split] == whole
    objs = payloads(sse)
    assert len(objs) == 2 * len(body["choices"]) + (1 if include_usage and "usage" in body else 0)
    kind = "chat.completion.chunk" if body["object"] == "chat.completion" else "text_completion"
    assert all(o["object"] == kind for o in objs)


@pytest.mark.parametrize("include_usage", [False, True])
def test_seamline_reads_its_own_stream_without_repairs(include_usage: bool) -> None:
    shaper = OpenAIShaper(strip_usage=not include_usage)
    reframer = Reframer()
    sse = completion_to_sse(COMPLETION, include_usage)
    out = b"".join(shaper.render(reframer.feed(sse[i : i + 7])) for i in range(0, len(sse), 7))
    assert out + shaper.render(reframer.close()) + shaper.finish() == sse
    assert shaper.finished and shaper.done
    assert not shaper.repairs
