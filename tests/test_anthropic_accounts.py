"""End to end: accounts of ``kind = "anthropic"`` behind the chat route (the real
openai client) and the Messages front (the real anthropic client), against a scripted
Anthropic upstream that writes exact bytes."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import openai
import pytest

from support.admin import admin
from support.builders import ADMIN_KEY, account, config_text, sse_stream
from support.clients import client
from support.seamline import StartSeamline
from support.upstream import MakeUpstream, Upstream

HI: Any = [{"role": "user", "content": "hi"}]


def ev(name: str, **data: Any) -> bytes:
    payload = json.dumps({"type": name, **data}).encode()
    return b"event: " + name.encode() + b"\ndata: " + payload + b"\n\n"


def args(index: int, fragment: str) -> bytes:
    delta = {"type": "input_json_delta", "partial_json": fragment}
    return ev("content_block_delta", index=index, delta=delta)


def start(input_tokens: int = 10) -> bytes:
    usage = {"input_tokens": input_tokens, "output_tokens": 1, "cache_read_input_tokens": 4}
    message: dict[str, Any] = {
        "id": "msg_up", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [], "stop_reason": None, "stop_sequence": None, "usage": usage,
    }  # fmt: skip
    return ev("message_start", message=message)


def text_block(index: int, *words: str) -> list[bytes]:
    out = [ev("content_block_start", index=index, content_block={"type": "text", "text": ""})]
    out += [ev("content_block_delta", index=index, delta={"type": "text_delta", "text": w})
            for w in words]  # fmt: skip
    return [*out, ev("content_block_stop", index=index)]


def stop(reason: str = "end_turn", output_tokens: int = 7) -> list[bytes]:
    delta = {"stop_reason": reason, "stop_sequence": None}
    return [ev("message_delta", delta=delta, usage={"output_tokens": output_tokens}),
            ev("message_stop")]  # fmt: skip


def stream(*words: str) -> list[bytes]:
    return [start(), ev("ping"), *text_block(0, *words), *stop()]


def conf(*accounts: tuple[str, str, str]) -> str:
    """A fill-first config of these accounts: (name, url, kind)."""
    head = config_text(extra='[routing]\nstrategy = "fill_first"')
    return head + "".join(account(name, url, kind=kind) for name, url, kind in accounts)


@pytest.fixture
async def ups(make_upstream: MakeUpstream) -> list[Upstream]:
    return [await make_upstream(), await make_upstream()]


@pytest.fixture
async def claude_base(ups: list[Upstream], seamline: StartSeamline) -> str:
    return await seamline(conf(("claude", ups[0].url, "anthropic")))


def sent(up: Upstream, i: int = -1) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(up.requests[i]["body"])
    return body


async def chat_stream(base: str, **kw: Any) -> list[Any]:
    async with client(base) as c:
        made = await c.chat.completions.create(model="claude-x", messages=HI, stream=True, **kw)
        return [ch async for ch in made]


def text_of(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# -- chat clients -------------------------------------------------------------------------


@pytest.mark.parametrize("split", [0, 1, 9])
async def test_an_anthropic_stream_is_a_chat_stream(
    ups: list[Upstream], claude_base: str, split: int
) -> None:
    up = ups[0]
    raw = b"".join(stream("Hel", "lo ", "wörld"))
    pieces = [raw[i : i + split] for i in range(0, len(raw), split)] if split else [raw]
    up.script(*pieces, pause=0)
    chunks = await chat_stream(claude_base, stream_options={"include_usage": True})
    assert text_of(chunks) == "Hello wörld"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = chunks[-1].usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (14, 7)
    request = up.requests[0]
    assert request["path"] == "/v1/messages"
    assert request["headers"]["x-api-key"] == "sk-test-claude-secret"
    assert request["headers"]["anthropic-version"] == "2023-06-01"
    assert "Authorization" not in request["headers"]
    body = sent(up)
    assert body["max_tokens"] == 8192 and body["stream"] is True


async def test_crlf_and_unknown_events_are_read_as_anthropic_writes_them(
    ups: list[Upstream], claude_base: str
) -> None:
    up = ups[0]
    novel = ev("content_block_flux", index=0)  # a type newer than this code: ignored
    raw = b"".join([start(), novel, *text_block(0, "ok"), *stop()]).replace(b"\n", b"\r\n")
    up.script(raw)
    assert text_of(await chat_stream(claude_base)) == "ok"


async def test_tool_use_becomes_tool_calls(ups: list[Upstream], claude_base: str) -> None:
    up = ups[0]
    use = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}
    up.script(
        start(),
        ev("content_block_start", index=0, content_block=use),
        args(0, '{"city":'),
        args(0, '"Paris"}'),
        ev("content_block_stop", index=0),
        *stop("tool_use"),
    )  # fmt: skip
    tools: Any = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    chunks = await chat_stream(claude_base, tools=tools)
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert calls[0].id == "toolu_1" and calls[0].function.name == "get_weather"
    assert "".join(tc.function.arguments or "" for tc in calls) == '{"city":"Paris"}'
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert sent(up)["tools"][0]["name"] == "get_weather"


async def test_thinking_becomes_reasoning_content(ups: list[Upstream], claude_base: str) -> None:
    up = ups[0]
    block = {"type": "thinking", "thinking": "", "signature": ""}
    up.script(
        start(),
        ev("content_block_start", index=0, content_block=block),
        ev("content_block_delta", index=0, delta={"type": "thinking_delta", "thinking": "hmm"}),
        ev("content_block_stop", index=0),
        *text_block(1, "answer"),
        *stop(),
    )  # fmt: skip
    chunks = await chat_stream(claude_base, reasoning_effort="low")
    reasoning = "".join(
        getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices
    )
    assert reasoning == "hmm" and text_of(chunks) == "answer"
    assert sent(up)["thinking"]["type"] in ("enabled", "adaptive")


async def test_a_stream_without_message_stop_is_an_error_not_a_finish(
    ups: list[Upstream], claude_base: str
) -> None:
    ups[0].script(start(), *text_block(0, "half"), ending="reset")
    with pytest.raises(openai.APIError):
        await chat_stream(claude_base)


async def test_an_overloaded_anthropic_account_fails_over_before_the_first_byte(
    ups: list[Upstream], seamline: StartSeamline
) -> None:
    claude, chat = ups
    claude.script(
        b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}',
        status=529,
        content_type="application/json",
    )
    chat.script(*sse_stream("from chat"))
    base = await seamline(conf(("claude", claude.url, "anthropic"), ("c", chat.url, "api_key")))
    assert text_of(await chat_stream(base)) == "from chat"
    assert len(claude.requests) == 1


async def test_an_error_event_first_fails_over(
    ups: list[Upstream], seamline: StartSeamline
) -> None:
    claude, chat = ups
    claude.script(start(), ev("error", error={"type": "overloaded_error", "message": "busy"}))
    chat.script(*sse_stream("second"))
    base = await seamline(conf(("claude", claude.url, "anthropic"), ("c", chat.url, "api_key")))
    assert text_of(await chat_stream(base)) == "second"


async def test_a_rate_limited_only_account_is_a_429_with_its_retry_after(
    ups: list[Upstream], claude_base: str
) -> None:
    ups[0].script(
        b'{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}',
        status=429,
        content_type="application/json",
        headers={"retry-after": "12"},
    )
    with pytest.raises(openai.RateLimitError) as caught:
        await chat_stream(claude_base)
    assert caught.value.response.headers["retry-after"] == "12"


async def test_a_whole_message_is_one_chat_completion(
    ups: list[Upstream], claude_base: str
) -> None:
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
               "content": [{"type": "text", "text": "Whole."}], "stop_reason": "max_tokens",
               "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 2}}  # fmt: skip
    ups[0].script(json.dumps(message).encode(), content_type="application/json")
    async with client(claude_base) as c:
        got = await c.chat.completions.create(model="claude-x", messages=HI, max_tokens=2)
    assert got.choices[0].message.content == "Whole."
    assert got.choices[0].finish_reason == "length"
    assert got.usage is not None and got.usage.completion_tokens == 2
    assert sent(ups[0])["max_tokens"] == 2


# -- Messages clients: passed through -----------------------------------------------------


async def test_a_messages_stream_is_passed_through(ups: list[Upstream], claude_base: str) -> None:
    up = ups[0]
    raw = stream("pass", "ed")
    up.script(*raw)
    root = claude_base.removesuffix("/v1")
    async with (
        anthropic.AsyncAnthropic(base_url=root, api_key="k", max_retries=0) as c,
        c.messages.stream(model="claude-x", max_tokens=9, messages=HI) as s,
    ):
        final = await s.get_final_message()
    assert final.content[0].type == "text" and final.content[0].text == "passed"
    assert final.id == "msg_up"
    assert json.loads(up.requests[0]["body"]) == {
        "model": "claude-x", "max_tokens": 9, "messages": HI, "stream": True,
    }  # fmt: skip
    # The client's own version went through, with its key replaced by the account's.
    headers = up.requests[0]["headers"]
    assert headers["anthropic-version"]
    assert headers["x-api-key"] == "sk-test-claude-secret"


async def test_a_passed_through_stream_that_stops_early_ends_with_an_error(
    ups: list[Upstream], claude_base: str
) -> None:
    ups[0].script(start(), *text_block(0, "cut"))
    root = claude_base.removesuffix("/v1")
    async with anthropic.AsyncAnthropic(base_url=root, api_key="k", max_retries=0) as c:
        with pytest.raises(anthropic.APIStatusError) as caught:
            async with c.messages.stream(model="claude-x", max_tokens=9, messages=HI) as s:
                await s.get_final_message()
    body: Any = caught.value.body
    assert body["error"]["type"] == "api_error"


async def test_a_passed_through_stream_books_its_usage(
    ups: list[Upstream], seamline: StartSeamline
) -> None:
    text = conf(("claude", ups[0].url, "anthropic"))
    base = await seamline(
        text.replace("port = 0\n", f"port = 0\nadmin_key = {json.dumps(ADMIN_KEY)}\n", 1)
    )
    ups[0].script(*stream("counted"))
    root = base.removesuffix("/v1")
    async with (
        anthropic.AsyncAnthropic(base_url=root, api_key="k", max_retries=0) as c,
        c.messages.stream(model="claude-x", max_tokens=9, messages=HI) as s,
    ):
        await s.get_final_message()
    reply = await admin("GET", root, "/admin/usage")
    assert reply.status == 200
    row = next(r for r in reply.json()["accounts"] if r["name"] == "claude")
    # message_start: 10 input + 4 read from the cache; message_delta: 7 output.
    assert (row["today"]["prompt_tokens"], row["today"]["completion_tokens"]) == (14, 7)
