"""Chat chunks -> Anthropic stream events, judged by anthropic-python itself.

Every stream the translator writes is read back with anthropic-python's own ``Stream``
and ``MessageStream`` accumulator: the final message must hold exactly the text,
thinking, tool calls and usage the chat stream meant, and a truncated or failed
stream must raise there, never end as a complete message.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import pytest
from anthropic.types import TextBlock, ThinkingBlock, ToolUseBlock
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.core.dialects.anthropic_events import Event, encode, ping
from proxy.core.dialects.anthropic_stream import ChatToAnthropic
from support.anthropic_dialect import (
    chat_streams,
    chunk,
    final_message,
    raw_events,
    stream_bytes,
    translate,
    usage_chunk,
)
from support.builders import sse_of

# --- the shape every stream must have ---------------------------------------------------

_DELTA_OF = {"text": "text_delta", "thinking": "thinking_delta", "tool_use": "input_json_delta"}


def assert_well_formed(events: list[Event]) -> None:
    """message_start first; blocks one at a time, indices 0, 1, 2...; each delta of its
    block's kind; message_delta once, after every block; message_stop or error last."""
    assert events and events[0].name == "message_start"
    open_kind: str | None = None
    next_index = 0
    delta_seen = False
    for i, event in enumerate(events):
        assert event.data["type"] == event.name
        last = i == len(events) - 1
        if event.name == "content_block_start":
            assert open_kind is None and not delta_seen
            assert event.data["index"] == next_index
            open_kind = event.data["content_block"]["type"]
            next_index += 1
        elif event.name == "content_block_delta":
            assert open_kind is not None and event.data["index"] == next_index - 1
            assert event.data["delta"]["type"] == _DELTA_OF[open_kind]
        elif event.name == "content_block_stop":
            assert open_kind is not None and event.data["index"] == next_index - 1
            open_kind = None
        elif event.name == "message_delta":
            assert open_kind is None and not delta_seen
            delta_seen = True
        elif event.name == "message_stop":
            assert last and delta_seen
        elif event.name == "error":
            assert last
        else:
            assert i == 0


def names(events: list[Event]) -> list[str]:
    return [e.name for e in events]


# --- text, thinking, usage ---------------------------------------------------------------


def test_text_stream_becomes_a_message_the_sdk_accumulates() -> None:
    body = stream_bytes(
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hel"}),
        chunk({"content": "lo"}),
        chunk(finish="stop"),
        usage_chunk(12, 3),
    )
    message = final_message(body)
    assert [b.type for b in message.content] == ["text"]
    assert isinstance(message.content[0], TextBlock)
    assert message.content[0].text == "Hello"
    assert message.stop_reason == "end_turn"
    assert message.stop_sequence is None
    assert message.usage.input_tokens == 12
    assert message.usage.output_tokens == 3
    assert message.model == "claude-test"
    assert message.id == "msg_test"


def test_every_event_names_its_type_on_one_data_line() -> None:
    body = stream_bytes(chunk({"content": "a\nb"}), chunk(finish="stop"))
    blocks = body.split(b"\n\n")
    assert blocks[-1] == b""
    for block in blocks[:-1]:
        event_line, data_line = block.split(b"\n")
        name = event_line.removeprefix(b"event: ")
        assert json.loads(data_line.removeprefix(b"data: "))["type"] == name.decode()


def test_reasoning_is_a_thinking_block_closed_before_the_text_opens() -> None:
    events = translate(
        [
            sse_of(
                [
                    chunk({"reasoning_content": "Let me "}),
                    chunk({"reasoning_content": "think."}),
                    chunk({"content": "Answer."}),
                    chunk(finish="stop"),
                ]
            )
        ]
    )
    assert_well_formed(events)
    assert names(events)[1:8] == [
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
    ]
    message = final_message(encode(events))
    thinking, text = message.content
    assert isinstance(thinking, ThinkingBlock) and isinstance(text, TextBlock)
    assert thinking.thinking == "Let me think."
    # No signature can be made up; the SDK takes the empty one Anthropic's start carries.
    assert thinking.signature == ""
    assert text.text == "Answer."


def test_reasoning_under_its_other_name_and_under_both_is_taken_once() -> None:
    body = stream_bytes(
        chunk({"reasoning": "a"}),
        chunk({"reasoning": "b", "reasoning_content": "b"}),
        chunk({"content": "c"}),
        chunk(finish="stop"),
    )
    thinking, _ = final_message(body).content
    assert isinstance(thinking, ThinkingBlock) and thinking.thinking == "ab"


def test_message_start_comes_with_the_first_chunk_whatever_it_holds() -> None:
    t = ChatToAnthropic("claude-test")
    events = t.feed({"id": "chatcmpl-9", "choices": []})
    assert names(events) == ["message_start"]
    assert events[0].data["message"]["id"] == "msg_chatcmpl-9"
    assert events[0].data["message"]["content"] == []
    assert not t.has_content
    assert t.feed(chunk({"role": "assistant"})) == []
    assert not t.has_content
    assert names(t.feed(chunk({"content": "x"}))) == ["content_block_start", "content_block_delta"]
    assert t.has_content


def test_an_empty_answer_is_content_once_it_finished() -> None:
    t = ChatToAnthropic("claude-test")
    events = t.feed(chunk({"role": "assistant"}))
    events += t.feed(chunk(finish="stop"))
    assert t.has_content
    message = final_message(encode([*events, *t.feed(usage_chunk(1, 0)), *t.end()]))
    assert message.content == []


def test_message_delta_waits_for_the_usage_chunk() -> None:
    t = ChatToAnthropic("claude-test", message_id="msg_1")
    t.feed(chunk({"content": "hi"}))
    assert names(t.feed(chunk(finish="stop"))) == ["content_block_stop"]
    [delta] = t.feed(usage_chunk(100, 7, cached=60))
    assert delta.name == "message_delta"
    assert delta.data["usage"] == {
        "input_tokens": 40,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 60,
        "output_tokens": 7,
    }
    assert names(t.end()) == ["message_stop"]


def test_usage_in_the_finishing_chunk_is_sent_at_once() -> None:
    t = ChatToAnthropic("claude-test")
    t.feed(chunk({"content": "hi"}))
    usage = {"prompt_tokens": 5, "completion_tokens": 1}
    assert names(t.feed(chunk(finish="stop", usage=usage))) == [
        "content_block_stop",
        "message_delta",
    ]


def test_without_a_usage_chunk_the_clean_end_sends_the_delta() -> None:
    t = ChatToAnthropic("claude-test", input_tokens=42)
    events = t.feed(chunk({"content": "hi"}))
    events += t.feed(chunk(finish="stop"))
    end = t.end()
    assert names(end) == ["message_delta", "message_stop"]
    assert end[0].data["usage"] == {"output_tokens": 0}
    # The SDK keeps message_start's input figure, the estimate the gateway gave.
    message = final_message(encode(events + end))
    assert (message.usage.input_tokens, message.usage.output_tokens) == (42, 0)


def test_continuous_usage_takes_the_figure_at_the_finish() -> None:
    body = stream_bytes(
        chunk({"content": "a"}, usage={"prompt_tokens": 9, "completion_tokens": 1}),
        chunk({"content": "b"}, usage={"prompt_tokens": 9, "completion_tokens": 2}),
        chunk(finish="stop", usage={"prompt_tokens": 9, "completion_tokens": 3}),
    )
    usage = final_message(body).usage
    assert (usage.input_tokens, usage.output_tokens) == (9, 3)


def test_deepseek_cache_hits_are_cache_reads() -> None:
    usage = {"prompt_tokens": 50, "completion_tokens": 2, "prompt_cache_hit_tokens": 30}
    body = stream_bytes(
        chunk({"content": "a"}), chunk(finish="stop"), {"choices": [], "usage": usage}
    )
    got = final_message(body).usage
    assert (got.input_tokens, got.cache_read_input_tokens, got.output_tokens) == (20, 30, 2)


# --- stop reasons ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("finish", "stop"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
        ("something_new", "end_turn"),
    ],
)
def test_finish_reasons_map_to_stop_reasons(finish: str, stop: str) -> None:
    message = final_message(stream_bytes(chunk({"content": "x"}), chunk(finish=finish)))
    assert message.stop_reason == stop


def test_a_named_stop_sequence_is_stop_sequence() -> None:
    t = ChatToAnthropic("claude-test", stop_sequences=("END", "STOP"))
    t.feed(chunk({"content": "x"}))
    # vLLM names the stop string that ended a "stop" in the choice's stop_reason.
    finish = chunk(finish="stop")
    finish["choices"][0]["stop_reason"] = "STOP"
    events = t.feed(finish) + t.end()
    delta = next(e for e in events if e.name == "message_delta")
    assert delta.data["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "STOP"}


def test_an_unknown_stop_string_is_an_end_turn() -> None:
    t = ChatToAnthropic("claude-test", stop_sequences=("END",))
    t.feed(chunk({"content": "x"}))
    finish = chunk(finish="stop")
    finish["choices"][0]["stop_reason"] = "</s>"
    delta = next(e for e in t.feed(finish) + t.end() if e.name == "message_delta")
    assert delta.data["delta"]["stop_reason"] == "end_turn"


def test_stop_after_tool_calls_is_tool_use() -> None:
    call = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "f", "arguments": "{}"},
    }
    message = final_message(stream_bytes(chunk({"tool_calls": [call]}), chunk(finish="stop")))
    assert message.stop_reason == "tool_use"


def test_a_stop_sequence_reaches_the_sdk() -> None:
    finish = chunk(finish="stop")
    finish["choices"][0]["matched_stop"] = "END"  # SGLang's spelling
    t = ChatToAnthropic("claude-test", message_id="msg_1", stop_sequences=("END",))
    events = translate([sse_of([chunk({"content": "x"}), finish])], t)
    message = final_message(encode(events))
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "END")


# --- tool calls ------------------------------------------------------------------------


def call(index: int, arguments: str, id: str | None = None, name: str | None = None) -> Any:
    function: dict[str, Any] = {"arguments": arguments}
    piece: dict[str, Any] = {"index": index, "function": function}
    if id is not None:
        piece["id"] = id
        piece["type"] = "function"
    if name is not None:
        function["name"] = name
    return chunk({"tool_calls": [piece]})


def tool_uses(body: bytes) -> list[tuple[str, str, Any]]:
    return [
        (b.id, b.name, b.input) for b in final_message(body).content if isinstance(b, ToolUseBlock)
    ]


def test_tool_call_fragments_pass_on_as_they_arrive() -> None:
    t = ChatToAnthropic("claude-test")
    first = t.feed(call(0, "", id="call_1", name="get_weather"))
    assert names(first) == ["message_start", "content_block_start"]
    assert first[1].data["content_block"] == {
        "type": "tool_use",
        "id": "call_1",
        "name": "get_weather",
        "input": {},
    }
    [delta] = t.feed(call(0, '{"city": '))
    assert delta.data["delta"] == {"type": "input_json_delta", "partial_json": '{"city": '}
    [delta] = t.feed(call(0, '"Paris"}'))
    assert delta.data["delta"]["partial_json"] == '"Paris"}'


def test_a_tool_call_starts_only_once_its_name_is_known() -> None:
    t = ChatToAnthropic("claude-test")
    t.feed(chunk({"role": "assistant"}))
    assert t.feed(call(0, "", id="call_1")) == []
    events = t.feed(call(0, '{"a": 1}', name="f"))
    assert names(events) == ["content_block_start", "content_block_delta"]
    assert events[1].data["delta"]["partial_json"] == '{"a": 1}'


def test_several_tool_calls_by_their_index() -> None:
    body = stream_bytes(
        chunk({"content": "Checking both."}),
        call(0, '{"city":', id="call_a", name="weather"),
        call(0, ' "Paris"}'),
        call(1, '{"city": "Rome"}', id="call_b", name="weather"),
        chunk(finish="tool_calls"),
        usage_chunk(20, 10),
    )
    assert tool_uses(body) == [
        ("call_a", "weather", {"city": "Paris"}),
        ("call_b", "weather", {"city": "Rome"}),
    ]


def test_interleaved_tool_calls_keep_their_own_arguments() -> None:
    events = translate(
        [
            sse_of(
                [
                    call(0, '{"x": ', id="call_a", name="f"),
                    call(1, '{"y": ', id="call_b", name="g"),
                    call(0, "1}"),
                    call(1, "2}"),
                    chunk(finish="tool_calls"),
                ]
            )
        ]
    )
    assert_well_formed(events)
    assert tool_uses(encode(events)) == [("call_a", "f", {"x": 1}), ("call_b", "g", {"y": 2})]


def test_arguments_sent_as_an_object_and_calls_without_index() -> None:
    body = stream_bytes(
        chunk({"tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": {"a": 1}}}]}),
        chunk({"tool_calls": [{"id": "c2", "function": {"name": "g", "arguments": "{}"}}]}),
        chunk(finish="tool_calls"),
    )
    assert tool_uses(body) == [("c1", "f", {"a": 1}), ("c2", "g", {})]


def test_a_call_without_an_id_gets_one() -> None:
    body = stream_bytes(call(0, '{"q": 1}', name="search"), chunk(finish="tool_calls"))
    [(call_id, name, arguments)] = tool_uses(body)
    assert call_id.startswith("toolu_") and name == "search" and arguments == {"q": 1}


def test_shortened_tool_names_go_back_to_the_clients() -> None:
    long = "mcp__server__" + "x" * 80
    t = ChatToAnthropic("claude-test", message_id="msg_1", tool_names={"short_1": long})
    events = translate(
        [sse_of([call(0, "{}", id="call_1", name="short_1"), chunk(finish="tool_calls")])], t
    )
    assert tool_uses(encode(events)) == [("call_1", long, {})]


def test_text_after_an_unfinished_tool_call_waits_for_its_arguments() -> None:
    t = ChatToAnthropic("claude-test")
    t.feed(call(0, '{"a": ', id="c1", name="f"))
    assert t.feed(chunk({"content": "meanwhile"})) == []
    events = t.feed(call(0, "1}"))
    assert names(events) == [
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
    ]
    assert events[3].data["delta"] == {"type": "text_delta", "text": "meanwhile"}


def test_legacy_function_call_is_a_tool_use() -> None:
    body = stream_bytes(
        chunk({"function_call": {"name": "f", "arguments": '{"a": '}}),
        chunk({"function_call": {"arguments": "1}"}}),
        chunk(finish="function_call"),
    )
    [(_, name, arguments)] = tool_uses(body)
    assert (name, arguments) == ("f", {"a": 1})


# --- truncation is never completion ----------------------------------------------------


def assert_raises_in_sdk(body: bytes) -> anthropic.APIStatusError:
    assert b"event: message_stop" not in body
    with pytest.raises(anthropic.APIStatusError) as info:
        final_message(body)
    return info.value


def test_an_end_before_any_finish_reason_is_an_error() -> None:
    body = stream_bytes(chunk({"content": "half an ans"}), done=False)
    err = assert_raises_in_sdk(body)
    assert isinstance(err.body, dict)
    assert err.body["error"]["type"] == "api_error"
    assert "truncated" in err.body["error"]["message"]


def test_done_before_any_finish_reason_is_an_error() -> None:
    assert_raises_in_sdk(stream_bytes(chunk({"content": "half"})))


def test_a_cut_after_the_finish_reason_is_still_an_error() -> None:
    body = stream_bytes(chunk({"content": "x"}), chunk(finish="stop"), clean=False, done=False)
    assert_raises_in_sdk(body)


def test_a_mid_stream_error_chunk_ends_the_stream() -> None:
    error = {"error": {"message": "model crashed", "type": "server_error"}}
    events = translate([sse_of([chunk({"content": "x"}), error, chunk({"content": "y"})])])
    assert names(events)[-1] == "error"
    assert events[-1].data == {
        "type": "error",
        "error": {"type": "api_error", "message": "model crashed"},
    }
    assert_raises_in_sdk(encode(events))


def test_an_overloaded_upstream_is_an_overloaded_error() -> None:
    error = {"error": {"message": "busy", "code": 529}}
    events = translate([sse_of([chunk({"content": "x"}), error])])
    assert events[-1].data["error"]["type"] == "overloaded_error"


def test_an_error_event_and_a_bare_error_line() -> None:
    named = b'event: error\ndata: {"error": {"message": "boom", "code": 503}}\n\n'
    events = translate([sse_of([chunk({"content": "x"})], done=False) + named])
    assert events[-1].data["error"] == {"type": "overloaded_error", "message": "boom"}
    bare = b'{"error": {"message": "bare"}}\n'
    events = translate([sse_of([chunk({"content": "x"})], done=False) + bare])
    assert events[-1].data["error"]["message"] == "bare"


def test_a_finish_reason_that_means_failure_is_an_error() -> None:
    events = translate(
        [sse_of([chunk({"content": "x"}), chunk(finish="insufficient_system_resource")])]
    )
    assert events[-1].data["error"]["type"] == "overloaded_error"
    assert_raises_in_sdk(encode(events))


def test_fail_gives_one_error_and_nothing_after() -> None:
    t = ChatToAnthropic("claude-test")
    t.feed(chunk({"content": "x"}))
    [error] = t.fail("upstream idle for 300 s", 504)
    assert error.data["error"]["type"] == "api_error"
    assert t.errored and t.error is error
    assert t.feed(chunk({"content": "more"})) == []
    assert t.end() == []
    assert t.fail("again") == []


def test_an_error_before_any_chunk_is_only_the_error() -> None:
    t = ChatToAnthropic("claude-test")
    events = t.feed({"error": {"message": "rate limited", "type": "rate_limit_exceeded"}})
    assert names(events) == ["error"]
    assert not t.started and not t.has_content and t.errored
    # What the gateway answers with (or fails over on) before any byte went out.
    assert t.error_status == 429


def test_nothing_follows_done() -> None:
    body = sse_of([chunk({"content": "x"}), chunk(finish="stop")]) + sse_of(
        [chunk({"content": "after"})]
    )
    events = translate([body])
    assert names(events)[-1] == "message_stop"
    assert final_message(encode(events)).content[0].text == "x"  # type: ignore[union-attr]


def test_pings_keepalives_and_junk_are_not_events() -> None:
    body = b": keep-alive\n\nevent: ping\ndata: {}\n\ndata: not json\n\n" + sse_of(
        [chunk({"content": "x"}), chunk(finish="stop")]
    )
    assert names(translate([body])).count("content_block_delta") == 1


def test_ping_is_what_the_sdk_skips() -> None:
    body = stream_bytes(chunk({"content": "x"}), chunk(finish="stop"))
    head, sep, tail = body.partition(b"\n\n")
    with_pings = head + sep + ping() + tail + ping()
    assert ping() == b'event: ping\ndata: {"type":"ping"}\n\n'
    assert final_message(with_pings).content == final_message(body).content
    assert [e.type for e in raw_events(with_pings)] == [e.type for e in raw_events(body)]


# --- properties --------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(chat_streams())
def test_any_chat_stream_gives_well_formed_blocks_and_the_message_meant(
    case: tuple[list[Any], dict[str, Any]],
) -> None:
    chunks, meant = case
    events = translate([sse_of(chunks)])
    assert_well_formed(events)
    assert events[-1].name == "message_stop"
    message = final_message(encode(events))
    text = "".join(b.text for b in message.content if isinstance(b, TextBlock))
    thinking = "".join(b.thinking for b in message.content if isinstance(b, ThinkingBlock))
    tools = [b for b in message.content if isinstance(b, ToolUseBlock)]
    assert text == meant["text"]
    assert thinking == meant["thinking"]
    assert [b.id for b in tools] == meant["order"]
    for block in tools:
        name, arguments = meant["tools"][block.id]
        assert block.name == name
        assert block.input == json.loads(arguments)
    usage = message.usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.output_tokens) == meant[
        "usage"
    ]


@settings(max_examples=150, deadline=None)
@given(chat_streams(), st.data())
def test_any_byte_split_gives_the_same_events(
    case: tuple[list[Any], dict[str, Any]], data: st.DataObject
) -> None:
    body = sse_of(case[0]).replace(
        b"\n\n", data.draw(st.sampled_from([b"\n\n", b"\r\n\r\n", b"\r\r"]))
    )
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=12)))
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    assert translate(pieces) == translate([body])


@settings(max_examples=150, deadline=None)
@given(chat_streams(), st.data())
def test_a_stream_cut_anywhere_never_ends_in_message_stop(
    case: tuple[list[Any], dict[str, Any]], data: st.DataObject
) -> None:
    chunks = case[0]
    # Cut before the finish_reason (cleanly or not), or anywhere but uncleanly.
    clean = data.draw(st.booleans())
    keep = data.draw(st.integers(0, len(chunks) - 2 if clean else len(chunks)))
    events = translate([sse_of(chunks[:keep], done=False)], clean=clean)
    assert "message_stop" not in names(events)
    assert names(events)[-1] == "error"
    if events[0].name == "message_start":
        assert_well_formed(events)
        assert_raises_in_sdk(encode(events))


def test_only_the_first_choice_is_the_message() -> None:
    second = chunk({"content": "other answer"})
    second["choices"][0]["index"] = 1
    unnumbered = chunk({"content": "mine"})
    unnumbered["choices"][0]["index"] = None
    body = stream_bytes(second, unnumbered, chunk(finish="stop"))
    assert [b.text for b in final_message(body).content if isinstance(b, TextBlock)] == ["mine"]
