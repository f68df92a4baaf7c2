"""Whole answers, count_tokens, errors and the ending check of the Anthropic dialect."""

from __future__ import annotations

import base64
import json
import struct
import zlib
from typing import Any

import pytest
from anthropic.types import Message
from hypothesis import given
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion, ChatCompletionMessageFunctionToolCall

from proxy.core.convert import Aggregator
from proxy.core.dialects.anthropic_errors import (
    AnthropicError,
    error_body,
    error_type,
    from_openai,
    status_of,
    to_openai,
)
from proxy.core.dialects.anthropic_events import EndingCheck, encode, make
from proxy.core.dialects.anthropic_message import (
    completion_to_message,
    message_to_completion,
    tool_input,
)
from proxy.core.dialects.anthropic_tokens import (
    chat_tokens,
    count_tokens,
    image_size,
    image_tokens,
    text_tokens,
)
from proxy.core.openai import error_status
from proxy.core.sse import Reframer
from support.anthropic_dialect import final_message
from support.claude_code import CLAUDE_CODE


def completion(message: dict[str, Any], finish: str = "stop", **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-7",
        "object": "chat.completion",
        "created": 1,
        "model": "qwen3-coder",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": 30,
            "completion_tokens": 9,
            "prompt_tokens_details": {"cached_tokens": 10},
        },
        **extra,
    }


# --- chat.completion -> message ------------------------------------------------------


def test_a_completion_is_one_message_the_sdk_validates() -> None:
    body = completion(
        {
            "role": "assistant",
            "reasoning_content": "Think first.",
            "content": "Calling it.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "f", "arguments": '{"a": [1]}'},
                }
            ],
        },
        finish="tool_calls",
    )
    message = Message.model_validate(completion_to_message(body, model="claude-x"))
    assert message.id == "msg_chatcmpl-7"
    assert message.model == "claude-x"
    assert [b.model_dump(exclude_none=True) for b in message.content] == [
        {"type": "thinking", "thinking": "Think first.", "signature": ""},
        {"type": "text", "text": "Calling it."},
        {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": [1]}},
    ]
    assert message.stop_reason == "tool_use"
    assert message.stop_sequence is None
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens) == (20, 10)
    assert message.usage.output_tokens == 9


def test_a_streamed_answer_merged_by_the_aggregator_is_the_same_message() -> None:
    agg = Aggregator()
    for piece in (
        {"id": "chatcmpl-7", "choices": [{"index": 0, "delta": {"content": "Hi "}}]},
        {
            "id": "chatcmpl-7",
            "choices": [{"index": 0, "delta": {"content": "there"}, "finish_reason": "stop"}],
        },
        {"id": "chatcmpl-7", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}},
    ):
        agg.add(piece)
    message = completion_to_message(agg.result(), model="claude-x", message_id="msg_a")
    assert message["content"] == [{"type": "text", "text": "Hi there"}]
    assert message["usage"]["output_tokens"] == 2


@pytest.mark.parametrize(
    ("finish", "matched", "stop", "sequence"),
    [
        ("stop", None, "end_turn", None),
        ("length", None, "max_tokens", None),
        ("stop", "END", "stop_sequence", "END"),
        ("stop", "</s>", "end_turn", None),
        ("content_filter", None, "refusal", None),
    ],
)
def test_stop_reasons_of_a_completion(
    finish: str, matched: str | None, stop: str, sequence: str | None
) -> None:
    body = completion({"role": "assistant", "content": "x"}, finish)
    if matched:
        body["choices"][0]["stop_reason"] = matched
    message = completion_to_message(body, model="m", stop_sequences=("END",))
    assert (message["stop_reason"], message["stop_sequence"]) == (stop, sequence)


def test_content_parts_refusals_and_long_tool_names() -> None:
    body = completion(
        {
            "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            "tool_calls": [{"id": "c", "function": {"name": "short", "arguments": "{}"}}],
        }
    )
    message = completion_to_message(body, model="m", tool_names={"short": "mcp__very__long"})
    assert message["content"] == [
        {"type": "text", "text": "ab"},
        {"type": "tool_use", "id": "c", "name": "mcp__very__long", "input": {}},
    ]
    assert message["stop_reason"] == "tool_use"
    refusal = completion_to_message(completion({"content": None, "refusal": "no"}), model="m")
    assert refusal["content"] == [{"type": "text", "text": "no"}]


def test_broken_arguments_are_kept_not_lost() -> None:
    assert tool_input('{"a": 1}') == {"a": 1}
    assert tool_input("") == {}
    assert tool_input("{'a': 1}") == {"arguments": "{'a': 1}"}
    assert tool_input("[1, 2]") == {"arguments": "[1, 2]"}
    assert tool_input({"a": 2}) == {"a": 2}


def test_a_completion_without_an_answer_is_an_error_not_an_empty_message() -> None:
    with pytest.raises(AnthropicError) as info:
        completion_to_message({"choices": []}, model="m")
    assert (info.value.status, info.value.kind) == (502, "api_error")
    with pytest.raises(AnthropicError) as info:
        completion_to_message(
            completion({"content": "par"}, "insufficient_system_resource"), model="m"
        )
    assert info.value.kind == "overloaded_error"


# --- message -> chat.completion -----------------------------------------------------


ANTHROPIC_MESSAGE = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5",
    "content": [
        {"type": "thinking", "thinking": "Plan.", "signature": "sig"},
        {"type": "text", "text": "Here."},
        {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}},
        {"type": "tool_use", "id": "toolu_1", "name": "get", "input": {"k": "v"}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 5,
        "cache_read_input_tokens": 7,
        "cache_creation_input_tokens": 2,
        "output_tokens": 4,
    },
}


def test_an_anthropic_message_is_a_chat_completion_the_openai_sdk_validates() -> None:
    out = message_to_completion(ANTHROPIC_MESSAGE, created=1700000000)
    parsed = ChatCompletion.model_validate(out)
    choice = parsed.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Here."
    assert out["choices"][0]["message"]["reasoning_content"] == "Plan."
    assert choice.message.tool_calls is not None
    [call] = choice.message.tool_calls
    assert isinstance(call, ChatCompletionMessageFunctionToolCall)
    assert (call.id, call.function.name) == ("toolu_1", "get")
    assert json.loads(call.function.arguments) == {"k": "v"}
    assert parsed.usage is not None
    assert (
        parsed.usage.prompt_tokens,
        parsed.usage.completion_tokens,
        parsed.usage.total_tokens,
    ) == (14, 4, 18)
    assert parsed.usage.prompt_tokens_details is not None
    assert parsed.usage.prompt_tokens_details.cached_tokens == 7
    assert (parsed.id, parsed.model, parsed.created) == ("msg_01", "claude-sonnet-4-5", 1700000000)


def test_an_empty_message_has_empty_content() -> None:
    out = message_to_completion({"content": [], "stop_reason": "max_tokens"}, created=0)
    assert out["choices"][0]["message"]["content"] == ""
    assert out["choices"][0]["finish_reason"] == "length"


# --- count_tokens ------------------------------------------------------------------------


def test_count_tokens_of_a_claude_code_request() -> None:
    counted = count_tokens({k: v for k, v in CLAUDE_CODE.items() if k != "max_tokens"})
    assert set(counted) == {"input_tokens"}
    # The tool-use system prompt alone is 346 tokens.
    assert 346 < counted["input_tokens"] < 1000


def test_count_tokens_refuses_what_messages_refuses() -> None:
    with pytest.raises(AnthropicError):
        count_tokens({"model": "m"})


@given(st.text(max_size=200), st.text(min_size=1, max_size=200).filter(lambda s: s.strip() != ""))
def test_the_estimate_grows_with_the_input(head: str, more: str) -> None:
    assert text_tokens(head + " " + more) > text_tokens(head) or not head + more
    base = {"model": "m", "messages": [{"role": "user", "content": head or "x"}]}
    longer = {"model": "m", "messages": [{"role": "user", "content": (head or "x") + " " + more}]}
    assert count_tokens(longer)["input_tokens"] > count_tokens(base)["input_tokens"]


def test_text_estimates_on_known_shapes() -> None:
    assert text_tokens("") == 0
    assert text_tokens("Hello, world!") == 4  # cl100k: 4
    assert text_tokens("def f(x):\n    return x + 1\n") in range(9, 14)  # cl100k: 11
    assert text_tokens("你好世界") == 4  # one a character
    assert 90 < text_tokens("word " * 100) < 110


def _png(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = (
        struct.pack(">I", len(ihdr))
        + b"IHDR"
        + ihdr
        + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    )
    return b"\x89PNG\r\n\x1a\n" + chunk


def _jpeg(width: int, height: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + b"\x00" * 9
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + sof + b"\xff\xd9"


@pytest.mark.parametrize(
    ("data", "size"),
    [
        (_png(640, 480), (640, 480)),
        (b"GIF89a" + struct.pack("<HH", 320, 200) + b"\x00" * 8, (320, 200)),
        (_jpeg(1920, 1080), (1920, 1080)),
        (
            b"RIFF\x00\x00\x00\x00WEBPVP8X"
            + b"\x00" * 8
            + (799).to_bytes(3, "little")
            + (599).to_bytes(3, "little"),
            (800, 600),
        ),
        (b"not an image", None),
    ],
)
def test_image_sizes_from_their_headers(data: bytes, size: tuple[int, int] | None) -> None:
    assert image_size(data) == size


def test_image_tokens_follow_anthropics_formula() -> None:
    assert image_tokens(200, 200) == 54  # 40,000 / 750
    assert image_tokens(1000, 1000) == 1334
    assert image_tokens(4000, 3000) == 1534  # scaled into 1.15 megapixels first
    png = base64.b64encode(_png(200, 200)).decode()
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}}
                ],
            }
        ]
    }
    assert chat_tokens(body) == 3 + 3 + 54
    remote = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}],
            }
        ]
    }
    assert chat_tokens(remote) == 3 + 3 + 1600


def test_pdf_pages_are_counted() -> None:
    pdf = b"%PDF-1.4 /Type /Pages /Type /Page ... /Type/Page ..."
    data = "data:application/pdf;base64," + base64.b64encode(pdf).decode()
    body = {
        "messages": [{"role": "user", "content": [{"type": "file", "file": {"file_data": data}}]}]
    }
    assert chat_tokens(body) == 3 + 3 + 2 * 1500


# --- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (529, "overloaded_error"),
        (503, "overloaded_error"),
        (422, "invalid_request_error"),
        (502, "api_error"),
    ],
)
def test_statuses_and_error_types(status: int, kind: str) -> None:
    assert error_type(status) == kind
    if status not in (503, 422, 502):
        assert status_of(kind) == status
    err = AnthropicError("why", status)
    assert (
        err.body()
        == error_body(kind, "why")
        == {"type": "error", "error": {"type": kind, "message": "why"}}
    )
    # seamline's own reading of errors maps the type back to a status of the same class.
    assert error_status(err.json_bytes()) // 100 == status // 100


def test_an_upstream_openai_error_keeps_its_words_and_status() -> None:
    payload = json.dumps(
        {
            "error": {
                "message": "context too long",
                "type": "invalid_request_error",
                "code": "context_length_exceeded",
            }
        }
    ).encode()
    err = from_openai(payload, 400)
    assert (err.status, err.kind, err.message) == (400, "invalid_request_error", "context too long")
    # A 200 stream's error event has no status of its own: its words name one.
    assert (
        from_openai(b'{"error": {"message": "slow down", "code": "rate_limit_exceeded"}}').status
        == 429
    )
    assert from_openai(b"upstream exploded", 200).status == 502
    assert (
        from_openai(b'{"error": "TypeError", "message": "boom"}', 500).message == "TypeError: boom"
    )


def test_an_anthropic_error_as_an_openai_one() -> None:
    status, body = to_openai(
        b'{"type": "error", "error": {"type": "rate_limit_error", "message": "slow"}}'
    )
    assert status == 429
    assert json.loads(body) == {
        "error": {"message": "slow", "type": "rate_limit_error", "param": None, "code": None}
    }
    assert (
        to_openai(b'{"type": "error", "error": {"type": "overloaded_error", "message": "x"}}', 529)[
            0
        ]
        == 529
    )
    status, body = to_openai(b"<html>bad gateway</html>", 502)
    assert status == 502 and json.loads(body)["error"]["message"] == "<html>bad gateway</html>"


# --- the ending check of streams passed through unchanged -----------------------------------


def _anthropic_stream(stop: bool) -> bytes:
    message = {k: v for k, v in ANTHROPIC_MESSAGE.items() if k not in ("content", "stop_reason")}
    events = [
        make("message_start", message={**message, "content": [], "stop_reason": None}),
        make("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        make("content_block_delta", index=0, delta={"type": "text_delta", "text": "hi"}),
        make("content_block_stop", index=0),
        make(
            "message_delta",
            delta={"stop_reason": "end_turn", "stop_sequence": None},
            usage={"output_tokens": 1},
        ),
    ]
    if stop:
        events.append(make("message_stop"))
    return encode(events)


def check(body: bytes) -> EndingCheck:
    checker = EndingCheck()
    r = Reframer()
    checker.feed(r.feed(body))
    checker.feed(r.close())
    return checker


def test_a_complete_anthropic_stream_needs_nothing_appended() -> None:
    checker = check(_anthropic_stream(stop=True))
    assert checker.started and checker.content and checker.finished
    assert checker.finish() == b""


def test_a_stream_without_message_stop_is_truncated() -> None:
    body = _anthropic_stream(stop=False)
    checker = check(body)
    assert checker.content and not checker.finished
    tail = checker.finish()
    assert b"event: error" in tail and b"truncated" in tail
    with pytest.raises(Exception) as info:
        final_message(body + tail)
    assert "truncated" in str(info.value)
    assert checker.finish() == b""  # said once


def test_an_error_event_needs_nothing_more_and_is_kept() -> None:
    error = b"event: error\ndata: " + json.dumps(error_body("overloaded_error", "Over")).encode()
    error += b"\n\n"
    checker = check(b'event: message_start\ndata: {"type":"message_start"}\n\n' + error)
    assert checker.errored and not checker.content
    assert checker.error_payload is not None and b"overloaded_error" in checker.error_payload
    assert checker.finish() == b""


def test_a_lost_connection_says_so() -> None:
    assert b"connection was lost" in EndingCheck().finish(clean=False)
