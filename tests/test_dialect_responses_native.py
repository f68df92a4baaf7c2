"""The other direction, for accounts that speak the Responses API: a chat request as a
Responses request, Responses events as chat chunks (judged by openai-python's chat
stream), a response object as a chat completion, and the Responses ending check."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from openai import APIError
from openai.types.chat import ChatCompletion
from openai.types.responses.response_create_params import ResponseCreateParamsStreaming
from pydantic import TypeAdapter

from proxy.core.convert import Aggregator
from proxy.core.dialects.responses import (
    EndingCheck,
    RequestError,
    ResponsesToChat,
    chat_sse,
    chat_to_responses_request,
    encode_events,
    ended_properly,
    response_to_completion,
)
from proxy.core.openai import DONE_EVENT
from proxy.core.sse import Reframer
from support.responses_dialect import USAGE, Answer, answers, chunk, client, run, usage_chunk

CREATE = TypeAdapter(ResponseCreateParamsStreaming)


def native(**body: Any) -> dict[str, Any]:
    return chat_to_responses_request(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **body}
    ).body


def to_chat(
    events: list[dict[str, Any]], include_usage: bool = True
) -> tuple[ResponsesToChat, list[dict[str, Any]]]:
    t = ResponsesToChat(include_usage=include_usage)
    chunks = [c for e in events for c in t.feed(e)]
    return t, chunks + (t.end() if not t.done else [])


def stream_bytes(t: ResponsesToChat, chunks: list[dict[str, Any]]) -> bytes:
    return chat_sse(chunks) + (DONE_EVENT if t.done and not t.failed else b"")


# --- chat request -> Responses request ----------------------------------------------------


def test_a_chat_request_becomes_a_responses_request() -> None:
    body = chat_to_responses_request(
        {
            "model": "gpt",
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [
                {"role": "system", "content": "Rules."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Look"},
                        {"type": "image_url", "image_url": {"url": "https://x/i.png"}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": "Checking.",
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"a":1}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "ok"},
                {"role": "developer", "content": "Later."},
            ],
            "tools": [
                {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
            ],
            "tool_choice": {"type": "function", "function": {"name": "f"}},
            "max_completion_tokens": 99,
            "temperature": 0.1,
            "reasoning_effort": "low",
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "o", "schema": {"type": "object"}, "strict": True},
            },
            "logprobs": True,
            "top_logprobs": 2,
            "parallel_tool_calls": False,
            "user": "u",
            "seed": 7,
        }
    )
    assert body.stream and body.include_usage
    CREATE.validate_python(body.body)
    assert body.body == {
        "model": "gpt",
        "stream": True,
        "store": False,
        "instructions": "Rules.",
        "input": [
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Look"},
                    {"type": "input_image", "image_url": "https://x/i.png", "detail": "auto"},
                ],
            },
            {"type": "message", "role": "assistant", "content": "Checking."},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"a":1}'},
            {"type": "function_call_output", "call_id": "c1", "output": "ok"},
            {"type": "message", "role": "developer", "content": "Later."},
        ],
        "tools": [
            {"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": False}
        ],
        "tool_choice": {"type": "function", "name": "f"},
        "max_output_tokens": 99,
        "temperature": 0.1,
        "reasoning": {"effort": "low"},
        "text": {
            "format": {
                "type": "json_schema",
                "name": "o",
                "schema": {"type": "object"},
                "strict": True,
            }
        },
        "include": ["message.output_text.logprobs"],
        "top_logprobs": 2,
        "parallel_tool_calls": False,
        "user": "u",
    }


def test_custom_tools_and_their_calls_keep_their_kind() -> None:
    body = native(
        tools=[{"type": "custom", "custom": {"name": "apply_patch", "description": "d"}}],
        messages=[
            {"role": "user", "content": "go"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "custom",
                        "custom": {"name": "apply_patch", "input": "*** Begin"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "done"}]},
        ],
        tool_choice={
            "type": "allowed_tools",
            "allowed_tools": {
                "mode": "required",
                "tools": [{"type": "custom", "custom": {"name": "apply_patch"}}],
            },
        },
    )
    assert body["tools"] == [{"type": "custom", "name": "apply_patch", "description": "d"}]
    assert body["input"][1:] == [
        {"type": "custom_tool_call", "call_id": "c1", "name": "apply_patch", "input": "*** Begin"},
        {"type": "custom_tool_call_output", "call_id": "c1", "output": "done"},
    ]
    assert body["tool_choice"] == {
        "type": "allowed_tools",
        "mode": "required",
        "tools": [{"type": "custom", "name": "apply_patch"}],
    }


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n", 2),
        ("stop", ["x"]),
        ("frequency_penalty", 0.5),
        ("logit_bias", {"1": 2}),
        ("functions", [{"name": "f"}]),
        ("audio", {"voice": "x"}),
        ("modalities", ["text", "audio"]),
        ("top_k", 3),
    ],
)
def test_what_a_responses_upstream_cannot_do_is_refused_by_name(field: str, value: Any) -> None:
    with pytest.raises(RequestError) as caught:
        native(**{field: value})
    assert caught.value.param == field


def test_defaults_of_refused_fields_pass() -> None:
    body = native(n=1, frequency_penalty=0, presence_penalty=0, stop=None, modalities=["text"])
    assert "n" not in body and "stop" not in body


# --- Responses events -> chat chunks ------------------------------------------------------


def test_a_responses_stream_becomes_the_chat_stream_the_sdk_reads() -> None:
    events = run(
        [
            chunk({"reasoning_content": "hm"}),
            chunk({"content": "Hel"}),
            chunk({"content": "lo"}),
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"a":'},
                        }
                    ]
                }
            ),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
            chunk({}, "tool_calls"),
            usage_chunk(),
        ],
        end=None,
    )
    t, chunks = to_chat(events)
    assert t.done and not t.failed
    with (
        client(stream_bytes(t, chunks)) as c,
        c.chat.completions.stream(model="m", messages=[{"role": "user", "content": "hi"}]) as s,
    ):
        final = s.get_final_completion()
    message = final.choices[0].message
    assert message.content == "Hello"
    assert message.tool_calls is not None
    [tc] = message.tool_calls
    assert (tc.id, tc.function.name, tc.function.arguments) == ("c1", "f", '{"a":1}')
    assert final.choices[0].finish_reason == "tool_calls"
    assert final.usage is not None and final.usage.total_tokens == 18
    assert final.usage.prompt_tokens_details.cached_tokens == 4  # type: ignore[union-attr]
    assert final.id == "resp_test" and final.model == "up-model"


def test_incomplete_is_a_length_finish() -> None:
    _, chunks = to_chat(run([chunk({"content": "a"}), chunk({}, "length")]))
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"  # no usage: no usage chunk


@pytest.mark.parametrize("end", [True, False])
def test_a_failed_or_cut_responses_stream_is_an_error_the_sdk_raises(end: bool) -> None:
    events = run([chunk({"content": "partial"})], end=end)
    t, chunks = to_chat(events)
    assert t.failed and "error" in chunks[-1]
    with client(stream_bytes(t, chunks)) as c, pytest.raises(APIError, match=r"truncated|cut"):
        list(
            c.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}], stream=True
            )
        )
    # A stream that just stops, before any terminal event:
    t, chunks = to_chat(events[:-2])
    assert t.failed and "truncated" in chunks[-1]["error"]["message"]


def test_an_error_event_is_an_error_chunk_with_the_upstreams_words() -> None:
    t, chunks = to_chat(
        [{"type": "error", "code": "rate_limit_exceeded", "message": "slow", "sequence_number": 0}]
    )
    assert chunks == [
        {
            "error": {
                "message": "slow",
                "type": "upstream_error",
                "param": None,
                "code": "rate_limit_exceeded",
            }
        }
    ]
    assert t.failed and not t.committed  # the gateway may still try another account


def test_items_delivered_whole_reach_the_client_once() -> None:
    events = [
        {"type": "response.created", "response": {"id": "resp_1", "created_at": 5, "model": "x"}},
        {
            "type": "response.output_item.done",
            "item": {
                "type": "reasoning",
                "id": "rs",
                "summary": [{"type": "summary_text", "text": "t"}],
            },
        },
        {
            "type": "response.output_item.done",
            "item": {
                "type": "message",
                "id": "m",
                "content": [{"type": "output_text", "text": "all"}],
            },
        },
        {
            "type": "response.output_item.done",
            "item": {
                "type": "function_call",
                "id": "fc",
                "call_id": "c",
                "name": "f",
                "arguments": "{}",
            },
        },
        {"type": "response.completed", "response": {"id": "resp_1", "usage": None}},
    ]
    _, chunks = to_chat(events)
    agg = Aggregator()
    for c in chunks:
        agg.add(c)
    message = agg.result()["choices"][0]["message"]
    assert (message["content"], message["reasoning_content"]) == ("all", "t")
    assert message["tool_calls"][0]["function"] == {"name": "f", "arguments": "{}"}


def test_reframed_events_are_read_with_their_names() -> None:
    events = run([chunk({"content": "ok"}), chunk({}, "stop"), usage_chunk()], end=None)
    t = ResponsesToChat(include_usage=False)
    r = Reframer()
    data = encode_events(events)
    chunks = [c for i in range(0, len(data), 7) for c in t.feed_items(r.feed(data[i : i + 7]))]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "ok"
    assert all(c["choices"] for c in chunks)  # no usage chunk: the client did not ask


@settings(max_examples=100, deadline=None)
@given(answers())
def test_any_chat_answer_through_responses_and_back_is_the_same_answer(answer: Answer) -> None:
    """chat -> Responses events -> chat: what the upstream said, merged, is unchanged."""
    original = Aggregator()
    for c in answer.chunks:
        original.add(c)
    _, chunks = to_chat(run(answer.chunks))
    back = Aggregator()
    for c in chunks:
        back.add(c)
    was, now = original.result()["choices"][0], back.result()["choices"][0]
    assert (now["message"]["content"] or "") == (was["message"]["content"] or "")
    assert now["message"].get("reasoning_content", "") == was["message"].get(
        "reasoning_content", ""
    )
    was_calls = {c["id"]: c["function"] for c in was["message"].get("tool_calls", [])}
    now_calls = [(c["id"], c["function"]) for c in now["message"].get("tool_calls", [])]
    # In the order they first appeared; a function call's arguments unchanged (a custom
    # call goes as a chat custom call, which the Aggregator does not merge).
    assert [call_id for call_id, _ in now_calls] == [c[1] for c in answer.calls]
    for (kind, call_id, _, _), (_, fn) in zip(answer.calls, now_calls, strict=True):
        if kind == "function_call":
            assert fn == was_calls[call_id]
    assert now["finish_reason"] == answer.finish
    assert (back.usage is not None) == answer.usage


# --- response object -> chat completion ----------------------------------------------------


def test_a_response_object_is_a_chat_completion() -> None:
    events = run(
        [
            chunk({"reasoning_content": "r"}),
            chunk({"content": "Hi"}),
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "ns__do", "arguments": "{}"},
                        }
                    ]
                }
            ),
            chunk({}, "tool_calls", usage=USAGE),
        ],
        end=None,
    )
    answer = response_to_completion(events[-1]["response"])
    assert answer.status == 200
    completion = ChatCompletion.model_validate(answer.body)
    assert completion.choices[0].message.content == "Hi"
    assert completion.choices[0].finish_reason == "tool_calls"
    assert answer.body["choices"][0]["message"]["reasoning_content"] == "r"
    assert completion.usage is not None and completion.usage.total_tokens == 18


def test_a_failed_response_object_is_its_error_with_its_status() -> None:
    events = run(
        [chunk({"content": "a"}), {"error": {"message": "slow", "code": "rate_limit_exceeded"}}],
        end=None,
    )
    answer = response_to_completion(events[-1]["response"])
    assert answer.status == 429
    assert answer.body["error"]["message"] == "slow"


def test_an_incomplete_response_object_finishes_by_length() -> None:
    events = run([chunk({"content": "a"}), chunk({}, "length")])
    assert (
        response_to_completion(events[-1]["response"]).body["choices"][0]["finish_reason"]
        == "length"
    )


# --- the ending check ----------------------------------------------------------------------


def test_a_stream_that_ends_with_its_terminal_event_needs_nothing() -> None:
    events = run([chunk({"content": "a"}), chunk({}, "stop"), usage_chunk()], end=None)
    check = EndingCheck()
    r = Reframer()
    check.see(r.feed(encode_events(events)))
    assert check.ended and check.closing() == []
    assert ended_properly(e["type"] for e in events)


def test_a_stream_cut_before_its_terminal_event_gets_a_numbered_error() -> None:
    events = run([chunk({"content": "a"}), chunk({}, "stop")], end=None)
    check = EndingCheck()
    check.see(Reframer().feed(encode_events(events)))
    assert not ended_properly(e["type"] for e in events)
    [error] = check.closing(clean=False)
    assert error["type"] == "error"
    assert error["sequence_number"] == events[-1]["sequence_number"] + 1
    # Without event names the data's type is read.
    unnamed = b"".join(
        b"data: " + json.dumps(e).encode() + b"\n\n" for e in run([chunk({}, "stop")])
    )
    check = EndingCheck()
    check.see(Reframer().feed(unnamed))
    assert check.ended


def test_a_chat_stream_that_fails_before_any_answer_can_go_to_another_account() -> None:
    t = ResponsesToChat(include_usage=True)
    t.feed({"type": "response.created", "response": {"id": "r", "created_at": 1, "model": "m"}})
    chunks = t.feed(
        {
            "type": "response.failed",
            "response": {"error": {"code": "rate_limit_exceeded", "message": "busy"}},
        }
    )
    assert t.failed and not t.committed
    assert t.failure is not None and t.failure.status == 429
    assert chunks[0]["error"]["message"] == "busy"


def test_a_stream_whose_last_event_is_an_error_needs_no_second_one() -> None:
    check = EndingCheck()
    check.see(
        Reframer().feed(
            b'event: error\ndata: {"type":"error","message":"x","sequence_number":3}\n\n'
        )
    )
    assert not check.ended and check.closing() == []
