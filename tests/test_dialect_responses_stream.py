"""Chat chunks in, Responses events out: the stream translator, judged by openai-python.

Every stream is validated event by event against the SDK's pydantic types and read
back by the SDK's own client (its SSE decoder and ``ResponseStreamState``), and the
properties hold for any chat stream (text, reasoning, interleaved tool calls, usage)
and any split of its bytes.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.responses import Response, ResponseFunctionToolCall

from proxy.core.dialects.responses_answer import completion_to_response
from proxy.core.dialects.responses_common import (
    UpstreamFailure,
    encode_event,
    encode_events,
    sequential_ids,
)
from proxy.core.dialects.responses_request import translate_request
from proxy.core.sse import Event, Reframer
from support.builders import sse_of
from support.responses_dialect import (
    REQUEST,
    TOOLS,
    USAGE,
    Answer,
    answers,
    call,
    chat_request,
    check_well_formed,
    chunk,
    client,
    pieces,
    run,
    sdk_read,
    translator,
    usage_chunk,
    validate,
)


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


# --- the handshake and the terminal event ----------------------------------------------


def test_nothing_is_sent_before_the_upstream_says_something() -> None:
    t = translator()
    assert t.feed(chunk({"role": "assistant", "content": ""})) == []
    assert t.feed(chunk({"content": None, "tool_calls": []})) == []
    assert not t.committed
    events = t.feed(chunk({"content": "Hi"}))
    assert t.committed
    assert types(events) == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    assert events[0]["response"]["status"] == "in_progress"
    assert events[0]["response"]["output"] == []


def test_an_error_before_any_content_fails_the_response_in_four_events() -> None:
    t = translator()
    failure = UpstreamFailure("slow down", code="rate_limit_exceeded", status=429)
    events = t.fail(failure)
    validate(events)
    assert types(events) == ["response.created", "response.in_progress", "error", "response.failed"]
    assert events[2]["code"] == "rate_limit_exceeded"
    assert events[2]["message"] == "slow down"
    error = events[3]["response"]["error"]
    assert error["code"] == "rate_limit_exceeded"
    assert error["message"] == "slow down"
    assert t.done and t.status == "failed"
    assert t.feed(chunk({"content": "late"})) == [] and t.end() == []


def test_the_terminal_event_waits_for_the_usage_chunk() -> None:
    t = translator()
    t.feed(chunk({"content": "Hi"}))
    closing = t.feed(chunk({}, "stop"))
    assert types(closing)[-1] == "response.output_item.done"  # items close at once
    [completed] = t.feed(usage_chunk())
    assert completed["type"] == "response.completed"
    usage = completed["response"]["usage"]
    assert usage == {
        "input_tokens": 11,
        "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0},
        "output_tokens": 7,
        "output_tokens_details": {"reasoning_tokens": 3},
        "total_tokens": 18,
    }
    assert t.end() == []


def test_usage_on_the_finish_chunk_completes_at_once() -> None:
    events = run([chunk({"content": "Hi"}), chunk({}, "stop", usage=USAGE)], end=None)
    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["usage"]["total_tokens"] == 18


def test_a_clean_end_after_the_finish_completes_without_usage() -> None:
    events = run([chunk({"content": "Hi"}), chunk({}, "stop")])
    validate(events)
    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["usage"] is None


def test_length_is_an_incomplete_response_for_max_output_tokens() -> None:
    events = run([chunk({"content": "Hi"}), chunk({}, "length"), usage_chunk()])
    validate(events)
    last = events[-1]
    assert last["type"] == "response.incomplete"
    assert last["response"]["status"] == "incomplete"
    assert last["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert last["response"]["output"][0]["status"] == "incomplete"
    assert check_well_formed(events).text == "Hi"


def test_content_filter_is_an_incomplete_response_for_content_filter() -> None:
    events = run([chunk({"content": "Hi"}), chunk({}, "content_filter")])
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "content_filter"}


# --- truncation is never completion ------------------------------------------------------


def test_a_clean_end_before_any_finish_reason_fails() -> None:
    events = run([chunk({"content": "Hi"})], end=True)
    validate(events)
    assert types(events)[-2:] == ["error", "response.failed"]
    assert "truncated" in events[-1]["response"]["error"]["message"]
    assert "response.completed" not in types(events)


def test_a_cut_after_the_finish_but_before_the_usage_fails() -> None:
    events = run([chunk({"content": "Hi"}), chunk({}, "stop")], end=False)
    assert types(events)[-2:] == ["error", "response.failed"]


def test_an_error_chunk_mid_stream_fails_and_leaves_the_half_call_open() -> None:
    events = run(
        [
            chunk({"tool_calls": [call(0, '{"pa', "call_1", "f")]}),
            {"error": {"message": "overloaded", "type": "server_error", "code": "overloaded"}},
            chunk({"content": "never"}),
        ],
        end=True,
    )
    validate(events)
    assert types(events)[-2:] == ["error", "response.failed"]
    # No output_item.done for the cut call: a client must not run half a tool call.
    assert "response.output_item.done" not in types(events)
    assert events[-1]["response"]["output"][0]["status"] == "incomplete"
    assert events[-2]["message"] == "overloaded"
    assert check_well_formed(events).terminal == "response.failed"


def test_an_error_finish_reason_fails() -> None:
    events = run([chunk({"content": "Hi"}), chunk({}, "error")], end=None)
    assert types(events)[-2:] == ["error", "response.failed"]


def test_the_sdk_gets_no_final_response_from_a_failed_stream() -> None:
    events = run([chunk({"content": "partial"})], end=False)
    read = sdk_read(encode_events(events))
    assert read.final is None
    assert [e.type for e in read.events][-2:] == ["error", "response.failed"]
    assert read.events[-1].response.output_text == "partial"


# --- content ----------------------------------------------------------------------------


def test_reasoning_closes_before_the_answer_opens() -> None:
    events = run(
        [
            chunk({"reasoning_content": "Let me"}),
            chunk({"reasoning_content": " think"}),
            chunk({"content": "42"}),
            chunk({}, "stop"),
            usage_chunk(),
        ]
    )
    validate(events)
    kinds = types(events)
    assert kinds.index("response.reasoning_summary_text.done") < kinds.index(
        "response.content_part.added"
    )
    outline = check_well_formed(events)
    assert (outline.reasoning, outline.text) == ("Let me think", "42")
    assert events[-1]["response"]["output"][0] == {
        "id": "rs_t0000",
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": "Let me think"}],
    }


def test_reasoning_spelled_reasoning_counts_once() -> None:
    events = run(
        [
            chunk({"reasoning": "a"}),
            chunk({"reasoning": "b", "reasoning_content": "b"}),
            chunk({"content": "c"}),
            chunk({}, "stop"),
        ]
    )
    outline = check_well_formed(events)
    assert (outline.reasoning, outline.text) == ("ab", "c")


def test_a_refusal_is_a_refusal_part() -> None:
    events = run([chunk({"refusal": "I can't"}), chunk({}, "stop")])
    validate(events)
    assert check_well_formed(events).refusal == "I can't"
    assert "response.refusal.done" in types(events)


def test_logprobs_reach_the_text_events_and_the_part() -> None:
    lp = {
        "content": [
            {
                "token": "Hi",
                "logprob": -0.5,
                "bytes": [72, 105],
                "top_logprobs": [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105]}],
            }
        ]
    }
    t = translator()
    events = t.feed(
        {
            **chunk({"content": "Hi"}),
            "choices": [{"index": 0, "delta": {"content": "Hi"}, "logprobs": lp}],
        }
    )
    events += t.feed(chunk({}, "stop")) + t.end()
    validate(events)
    delta = next(e for e in events if e["type"] == "response.output_text.delta")
    assert delta["logprobs"] == [
        {"token": "Hi", "logprob": -0.5, "top_logprobs": [{"token": "Hi", "logprob": -0.5}]}
    ]
    part = events[-1]["response"]["output"][0]["content"][0]
    assert part["logprobs"][0]["bytes"] == [72, 105]


def test_content_after_the_finish_is_ignored() -> None:
    events = run([chunk({"content": "a"}), chunk({}, "stop"), chunk({"content": "b"})])
    assert check_well_formed(events).text == "a"


def test_the_response_names_the_upstreams_model_and_echoes_the_request() -> None:
    request = chat_request(
        instructions="Be brief.",
        temperature=0.2,
        top_p=0.9,
        max_output_tokens=50,
        metadata={"k": "v"},
        store=False,
        user="u1",
        parallel_tool_calls=False,
        reasoning={"effort": "low"},
        text={"format": {"type": "json_object"}},
        previous_response_id="resp_old",
    )
    events = run([chunk({"content": "{}"}), chunk({}, "stop")], request=request)
    validate(events)
    response = events[-1]["response"]
    assert response["model"] == "up-model"
    expected = {
        "instructions": "Be brief.",
        "temperature": 0.2,
        "top_p": 0.9,
        "max_output_tokens": 50,
        "metadata": {"k": "v"},
        "store": False,
        "user": "u1",
        "parallel_tool_calls": False,
        "reasoning": {"effort": "low"},
        "text": {"format": {"type": "json_object"}},
        "previous_response_id": "resp_old",
        "tool_choice": "auto",
        "tools": [],
        "id": "resp_test",
        "object": "response",
        "created_at": 1700000000,
    }
    assert {k: response[k] for k in expected} == expected


def test_ids_come_from_the_seed_and_are_stable() -> None:
    chunks = [
        chunk({"reasoning_content": "r"}),
        chunk({"content": "a"}),
        chunk({"tool_calls": [call(0, "{}", "call_1", "f")]}),
        chunk({}, "tool_calls"),
    ]
    assert run(chunks) == run(chunks)
    ids = [e["item"]["id"] for e in run(chunks) if e["type"] == "response.output_item.added"]
    assert ids == ["rs_t0000", "msg_t0001", "fc_t0002"]


# --- tool calls ---------------------------------------------------------------------------


def test_interleaved_tool_calls_go_to_their_own_items() -> None:
    chunks = [
        chunk({"content": "Checking."}),
        chunk({"tool_calls": [call(0, "", "call_a", "f"), call(1, '{"q":', "call_b", "g")]}),
        chunk({"tool_calls": [call(0, '{"x":')]}),
        chunk({"tool_calls": [call(1, '"y"}'), call(0, "1}")]}),
        chunk({}, "tool_calls"),
        usage_chunk(),
    ]
    events = run(chunks, end=None)
    validate(events)
    outline = check_well_formed(events)
    assert outline.text == "Checking."
    assert outline.calls == [
        ("function_call", "call_a", "f", '{"x":1}'),
        ("function_call", "call_b", "g", '{"q":"y"}'),
    ]
    kinds = types(events)
    # The text item closes where the calls begin, as OpenAI orders its items.
    assert kinds.index("response.output_item.done") < kinds.index(
        "response.function_call_arguments.delta"
    )
    read = sdk_read(encode_events(events))
    assert read.final is not None
    assert read.final.output_text == "Checking."
    calls = [
        (o.call_id, o.name, o.arguments) for o in read.final.output if o.type == "function_call"
    ]
    assert calls == [("call_a", "f", '{"x":1}'), ("call_b", "g", '{"q":"y"}')]


def test_arguments_wait_only_until_the_name_is_known() -> None:
    t = translator()
    assert (
        t.feed(
            chunk({"tool_calls": [{"index": 0, "id": "call_1", "function": {"arguments": '{"a"'}}]})
        )
        == []
    )
    events = t.feed(
        chunk({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": ":1}"}}]})
    )
    added, delta = events[-2], events[-1]
    assert added["item"]["call_id"] == "call_1" and added["item"]["name"] == "f"
    assert delta["delta"] == '{"a":1}'


def test_a_call_without_an_id_gets_one_when_its_arguments_start() -> None:
    events = run(
        [
            chunk({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "{}"}}]}),
            chunk({}, "tool_calls"),
        ]
    )
    [(_, call_id, name, args)] = check_well_formed(events).calls
    assert call_id == "call_t0000" and (name, args) == ("f", "{}")


def test_an_upstream_that_reuses_index_0_still_gets_two_calls() -> None:
    events = run(
        [
            chunk({"tool_calls": [call(0, "{}", "call_a", "f")]}),
            chunk({"tool_calls": [call(0, "{}", "call_b", "g")]}),
            chunk({}, "tool_calls"),
        ]
    )
    assert [c[1:3] for c in check_well_formed(events).calls] == [("call_a", "f"), ("call_b", "g")]


def test_calls_without_index_are_told_apart_by_id() -> None:
    events = run(
        [
            chunk({"tool_calls": [{"id": "call_a", "function": {"name": "f", "arguments": "{"}}]}),
            chunk({"tool_calls": [{"function": {"arguments": "}"}}]}),
            chunk({"tool_calls": [{"id": "call_b", "function": {"name": "g", "arguments": "{}"}}]}),
            chunk({}, "tool_calls"),
        ]
    )
    assert [c[1:] for c in check_well_formed(events).calls] == [
        ("call_a", "f", "{}"),
        ("call_b", "g", "{}"),
    ]


def test_arguments_sent_as_an_object_become_json_text() -> None:
    events = run(
        [
            chunk(
                {
                    "tool_calls": [
                        {"index": 0, "id": "c", "function": {"name": "f", "arguments": {"a": 1}}}
                    ]
                }
            ),
            chunk({}, "tool_calls"),
        ]
    )
    assert check_well_formed(events).calls[0][3] == '{"a": 1}'


def test_a_repeated_name_is_not_doubled() -> None:
    events = run(
        [
            chunk({"tool_calls": [call(0, "{", "c", "f")]}),
            chunk({"tool_calls": [call(0, "}", name="f")]}),
            chunk({}, "tool_calls"),
        ]
    )
    assert check_well_formed(events).calls[0][2] == "f"


def test_a_namespaced_call_keeps_its_namespace() -> None:
    events = run(
        [chunk({"tool_calls": [call(0, "{}", "call_n", "ns__do")]}), chunk({}, "tool_calls")]
    )
    validate(events)
    item = events[-1]["response"]["output"][0]
    assert (item["type"], item["name"], item["namespace"]) == ("function_call", "do", "ns")
    read = sdk_read(encode_events(events))
    assert read.final.output[0].namespace == "ns"


def test_a_bridged_custom_tool_call_is_a_custom_tool_call_with_its_input() -> None:
    patch = '*** Begin Patch\n*** Add File: a.txt\n+"héllo" \\ 😀\n*** End Patch'
    args = json.dumps({"input": patch})  # ASCII escapes, a surrogate pair among them
    chunks = [chunk({"tool_calls": [call(0, args[:5], "call_p", "apply_patch")]})]
    chunks += [chunk({"tool_calls": [call(0, args[i : i + 3])]}) for i in range(5, len(args), 3)]
    events = run([*chunks, chunk({}, "tool_calls"), usage_chunk()], end=None)
    validate(events)
    [(kind, call_id, name, text)] = check_well_formed(events).calls
    assert (kind, call_id, name, text) == ("custom_tool_call", "call_p", "apply_patch", patch)
    assert sum(e["type"] == "response.custom_tool_call_input.delta" for e in events) > 3
    read = sdk_read(encode_events(events))
    [item] = read.final.output
    assert (item.type, item.input) == ("custom_tool_call", patch)


def test_custom_arguments_that_are_no_json_object_are_the_input() -> None:
    events = run(
        [
            chunk({"tool_calls": [call(0, "*** Begin Patch", "c", "apply_patch")]}),
            chunk({}, "tool_calls"),
        ]
    )
    assert check_well_formed(events).calls[0][3] == "*** Begin Patch"


def test_the_helper_stream_parses_strict_function_arguments() -> None:
    tool = {
        "type": "function",
        "name": "f",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {"x": {"type": "integer"}},
            "required": ["x"],
            "additionalProperties": False,
        },
    }
    events = run(
        [
            chunk({"tool_calls": [call(0, '{"x": 3}', "c1", "f")]}),
            chunk({}, "tool_calls"),
            usage_chunk(),
        ],
        request=chat_request(tools=[tool]),
        end=None,
    )
    read = sdk_read(encode_events(events), tools=[tool])
    assert read.final.output[0].parsed_arguments == {"x": 3}


# --- reading the upstream's bytes ----------------------------------------------------------


def feed_bytes(data: bytes, cuts: list[int], clean: bool = True) -> list[dict[str, Any]]:
    t = translator()
    reframer = Reframer()
    events = [e for piece in pieces(data, cuts) for e in t.feed_items(reframer.feed(piece))]
    return events + t.feed_items(reframer.close()) + t.end(clean=clean)


def test_upstream_error_events_and_lines_fail_the_response() -> None:
    head = b"data: " + json.dumps(chunk({"content": "a"})).encode() + b"\n\n"
    for error in (
        b'event: error\ndata: {"message": "boom", "code": "server_error"}\n\n',
        b'{"error": {"message": "boom", "type": "server_error"}}\n',
        b'data: {"error": {"message": "boom"}}\n\n',
    ):
        events = feed_bytes(head + error, [])
        assert types(events)[-2:] == ["error", "response.failed"]
        assert events[-1]["response"]["error"]["message"] == "boom"


def test_pings_comments_and_glued_events_are_read_as_the_chat_route_reads_them() -> None:
    a, b = (json.dumps(chunk({"content": c})).encode() for c in "ab")
    data = (
        b": keep-alive\n\nevent: ping\ndata: {}\n\n"
        + b"data: "
        + a
        + b"\ndata: "
        + b
        + b"\n\n"
        + b"data: "
        + json.dumps(chunk({}, "stop")).encode()
        + b"\n\ndata: [DONE]\n\n"
    )
    events = feed_bytes(data, [])
    assert events[-1]["type"] == "response.completed"
    assert check_well_formed(events).text == "ab"


def test_events_encode_as_one_named_event_of_compact_json() -> None:
    event = {"type": "response.output_text.delta", "sequence_number": 3, "delta": "é"}
    assert encode_event(event) == (
        b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
        b'"sequence_number":3,"delta":"\xc3\xa9"}\n\n'
    )
    # A lone surrogate cannot be UTF-8: that event is ASCII-escaped, the rest is not.
    lone = encode_event({"type": "x", "delta": "\ud83d"})
    assert lone == b'event: x\ndata: {"type":"x","delta":"\\ud83d"}\n\n'


# --- not streaming -------------------------------------------------------------------------


def completion(message: dict[str, Any], finish: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-9",
        "object": "chat.completion",
        "created": 1,
        "model": "up-model",
        "choices": [
            {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}
        ],
        "usage": USAGE,
    }


def test_a_completion_is_one_response_object_the_sdk_reads() -> None:
    body = completion(
        {
            "content": "Hello",
            "reasoning_content": "hm",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "ns__do", "arguments": "{}"},
                }
            ],
        },
        "tool_calls",
    )
    response = completion_to_response(
        REQUEST, body, response_id="resp_1", created_at=5, ids=sequential_ids("n")
    )
    Response.model_validate(response)
    assert response["status"] == "completed"
    assert [o["type"] for o in response["output"]] == ["reasoning", "message", "function_call"]
    with client(json.dumps(response).encode(), "application/json") as c:
        read = c.responses.create(model="m", input="hi")
    assert read.output_text == "Hello"
    fc = read.output[2]
    assert isinstance(fc, ResponseFunctionToolCall)
    assert (fc.name, fc.namespace, fc.call_id) == ("do", "ns", "call_1")
    assert read.usage is not None and read.usage.output_tokens_details.reasoning_tokens == 3


def test_a_completion_cut_by_length_is_incomplete() -> None:
    response = completion_to_response(
        REQUEST,
        completion({"content": "Hel"}, "length"),
        response_id="r",
        created_at=5,
        ids=sequential_ids("n"),
    )
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}


def test_a_completion_without_finish_reason_still_completed() -> None:
    body = completion({"content": "ok"})
    body["choices"][0]["finish_reason"] = None
    response = completion_to_response(
        REQUEST, body, response_id="r", created_at=5, ids=sequential_ids("n")
    )
    assert response["status"] == "completed"


# --- properties ----------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(answers())
def test_any_chat_stream_gives_well_formed_events_that_say_what_it_said(answer: Answer) -> None:
    events = run(answer.chunks)
    validate(events)
    outline = check_well_formed(events)
    assert outline.terminal == answer.terminal
    assert (outline.text, outline.reasoning) == (answer.text, answer.reasoning)
    assert outline.calls == answer.calls
    usage = events[-1]["response"]["usage"]
    assert (usage is not None) == answer.usage
    kinds = types(events)
    for i, kind in enumerate(kinds):
        # Reasoning never stays open while answer text streams.
        if kind == "response.output_text.delta":
            opened = kinds[:i].count("response.reasoning_summary_part.added")
            closed = kinds[:i].count("response.reasoning_summary_part.done")
            assert opened == closed


@settings(max_examples=150, deadline=None)
@given(answers(), st.lists(st.integers(0, 10_000), max_size=12), st.booleans())
def test_any_split_of_the_upstream_bytes_gives_the_same_events(
    answer: Answer, cuts: list[int], crlf: bool
) -> None:
    data = sse_of(answer.chunks)
    if crlf:
        data = data.replace(b"\n", b"\r\n")
    assert feed_bytes(data, cuts) == run(answer.chunks)


@settings(max_examples=50, deadline=None)
@given(answers())
def test_the_sdk_reads_back_what_the_chat_stream_meant(answer: Answer) -> None:
    events = run(answer.chunks)
    read = sdk_read(encode_events(events))
    assert [e.type for e in read.events] == types(events)
    assert [e.sequence_number for e in read.helper_events] == list(range(len(events)))
    if answer.terminal == "response.incomplete":
        assert read.final is None
        final = read.events[-1].response
    else:
        final = read.final
        assert final is not None
    assert final.output_text == answer.text
    calls = [
        (o.type, o.call_id, o.name, o.arguments if o.type == "function_call" else o.input)
        for o in final.output
        if o.type in ("function_call", "custom_tool_call")
    ]
    assert calls == answer.calls
    if answer.usage:
        assert final.usage is not None
        assert (final.usage.input_tokens, final.usage.output_tokens, final.usage.total_tokens) == (
            11,
            7,
            18,
        )
        assert final.usage.input_tokens_details.cached_tokens == 4


@settings(max_examples=100, deadline=None)
@given(answers(), st.data())
def test_no_cut_stream_is_ever_completed(answer: Answer, data: st.DataObject) -> None:
    finish_at = next(
        i for i, c in enumerate(answer.chunks) if c["choices"] and c["choices"][0]["finish_reason"]
    )
    stop = data.draw(st.integers(0, finish_at))
    clean = data.draw(st.booleans())
    events = run(answer.chunks[:stop], end=clean)
    validate(events)
    assert events[-1]["type"] == "response.failed"
    assert "response.completed" not in types(events)
    check_well_formed(events)
    # An upstream error anywhere before the end fails the response as well.
    error = {"error": {"message": "boom", "type": "server_error"}}
    events = run([*answer.chunks[:stop], error, *answer.chunks[stop:]], end=True)
    assert events[-1]["type"] == "response.failed"
    assert "response.completed" not in types(events)


@settings(max_examples=100, deadline=None)
@given(answers())
def test_a_streamed_answer_replayed_as_history_is_the_same_assistant_turn(answer: Answer) -> None:
    output = run(answer.chunks)[-1]["response"]["output"]
    results = [
        {"type": f"{kind}_output", "call_id": call_id, "output": "ok"}
        for kind, call_id, _, _ in answer.calls
    ]
    body = translate_request(
        {"model": "m", "input": "next", "tools": TOOLS}, [*output, *results]
    ).body
    assistant = [m for m in body["messages"] if m["role"] == "assistant"]
    assert "".join(m["content"] or "" for m in assistant) == answer.text
    replayed = [c for m in assistant for c in m.get("tool_calls", [])]
    assert [c["id"] for c in replayed] == [c[1] for c in answer.calls]
    for (kind, _, name, said), chat_call in zip(answer.calls, replayed, strict=True):
        fn = chat_call["function"]
        args = json.loads(fn["arguments"])
        if kind == "custom_tool_call":
            assert (fn["name"], args) == ("apply_patch", {"input": said})
        else:
            assert fn["name"] == ("ns__do" if name == "do" else name)
            assert args == json.loads(said)
    thoughts = "\n\n".join(m["reasoning_content"] for m in assistant if "reasoning_content" in m)
    for item in output:
        if item["type"] == "reasoning" and assistant:
            assert item["summary"][0]["text"] in thoughts
    tools = [m for m in body["messages"] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in tools] == [c[1] for c in answer.calls]


def test_a_stream_that_fails_before_any_content_can_go_to_another_account() -> None:
    for items in (
        [Event(b'{"error": {"message": "busy", "code": "rate_limit_exceeded"}}')],
        [Event(b"[DONE]")],
        [Event(json.dumps(chunk({"role": "assistant"})).encode()), Event(b"[DONE]")],
    ):
        t = translator()
        events = t.feed_items(items)
        assert t.done and t.status == "failed" and not t.content_started
        assert t.failure is not None and events[-1]["type"] == "response.failed"
        assert events[-2]["message"] == t.failure.message
    t = translator()
    t.feed_items([Event(b'{"error": {"message": "busy", "code": "rate_limit_exceeded"}}')])
    assert t.failure is not None and t.failure.status == 429
    t = translator()
    t.feed(chunk({"content": "a"}))
    assert t.content_started  # from here on the client has it


def test_an_empty_answer_is_completed_with_no_output() -> None:
    t = translator()
    events = t.feed(chunk({}, "stop", usage=USAGE))
    assert t.status == "completed" and not t.content_started
    assert events[-1]["response"]["output"] == []
