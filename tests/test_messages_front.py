"""End to end: the Anthropic Messages front (``/v1/messages``) over chat-completions
accounts, judged by the real anthropic-python client."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import anthropic
import pytest

from support.builders import (
    DONE,
    chunk,
    chunk_object,
    compact,
    config_text,
    event,
    repaired_quirks,
    usage,
)
from support.clients import root
from support.seamline import StartSeamline
from support.upstream import Upstream

USAGE = usage(20, 6, cached=8)


def answer(*words: str, finish: str = "stop") -> list[bytes]:
    out = [event(chunk(w)) for w in words]
    usage_event = event(chunk(choices=[], usage=USAGE))
    return [*out, event(chunk(finish=finish)), usage_event, DONE]


def delta(**fields: Any) -> bytes:
    return compact(chunk_object(fields))


def claude(base: str, key: str = "client-key") -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=root(base), api_key=key, max_retries=0, timeout=10)


def sent(up: Upstream, i: int = -1) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(up.requests[i]["body"])
    return body


HI: Any = [{"role": "user", "content": "hi"}]


async def test_a_stream_is_translated_and_ends_with_message_stop(
    upstream: Upstream, proxied: str
) -> None:
    upstream.script(*answer("Hel", "lo ", "wörld"))
    async with (
        claude(proxied) as c,
        c.messages.stream(model="m", max_tokens=64, system="be brief", messages=HI) as stream,
    ):
        kinds = [e.type async for e in stream]
        final = await stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert final.content[0].type == "text" and final.content[0].text == "Hello wörld"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 6
    assert final.usage.cache_read_input_tokens == 8
    assert final.usage.input_tokens == 12  # net of the cached ones
    body = sent(upstream)
    assert body["messages"][0] == {"role": "system", "content": "be brief"}
    assert body["max_tokens"] == 64 or body.get("max_completion_tokens") == 64
    assert body["stream"] is True


async def test_a_whole_answer_is_one_message(upstream: Upstream, proxied: str) -> None:
    completion = {
        "id": "x", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Whole."},
                     "finish_reason": "length"}],
        "usage": USAGE,
    }  # fmt: skip
    upstream.script(json.dumps(completion).encode(), content_type="application/json")
    async with claude(proxied) as c:
        msg = await c.messages.create(model="m", max_tokens=5, messages=HI)
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.content[0].type == "text" and msg.content[0].text == "Whole."
    assert msg.stop_reason == "max_tokens"
    assert msg.usage.output_tokens == 6


async def test_a_tool_use_round_trip(upstream: Upstream, proxied: str) -> None:
    call = {"index": 0, "id": "call_7", "type": "function",
            "function": {"name": "get_weather", "arguments": ""}}  # fmt: skip
    upstream.script(
        event(delta(tool_calls=[call])),
        event(delta(tool_calls=[{"index": 0, "function": {"arguments": '{"city":'}}])),
        event(delta(tool_calls=[{"index": 0, "function": {"arguments": '"Paris"}'}}])),
        event(chunk(finish="tool_calls")),
        b"data: [DONE]\n\n",
    )
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    tools: Any = [{"name": "get_weather", "description": "weather", "input_schema": schema}]
    async with claude(proxied) as c:
        async with c.messages.stream(model="m", max_tokens=64, messages=HI, tools=tools) as s:
            partial = [e.partial_json async for e in s if e.type == "input_json"]
            first = await s.get_final_message()
        assert first.stop_reason == "tool_use"
        use = first.content[0]
        assert use.type == "tool_use"
        assert (use.id, use.name, use.input) == ("call_7", "get_weather", {"city": "Paris"})
        assert "".join(partial) == '{"city":"Paris"}' and len(partial) >= 2
        upstream.scripts.clear()
        upstream.script(*answer("Sunny."))
        follow: Any = [
            *HI,
            {"role": "assistant", "content": [u.model_dump() for u in first.content]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_7", "content": "sunny"}]},
        ]  # fmt: skip
        second = await c.messages.create(model="m", max_tokens=64, messages=follow, tools=tools)
    assert second.content[0].type == "text" and second.content[0].text == "Sunny."
    messages = sent(upstream)["messages"]
    assert messages[-2]["tool_calls"][0]["id"] == "call_7"
    assert messages[-1] == {"role": "tool", "tool_call_id": "call_7", "content": "sunny"}
    assert sent(upstream, 0)["tools"][0]["function"]["name"] == "get_weather"


async def test_reasoning_is_a_thinking_block_closed_before_the_text(
    upstream: Upstream, proxied: str
) -> None:
    upstream.script(
        event(delta(reasoning_content="Let me ")),
        event(delta(reasoning_content="think.")),
        *answer("Answer."),
    )
    async with claude(proxied) as c, c.messages.stream(
        model="m", max_tokens=2048, messages=HI,
        thinking={"type": "enabled", "budget_tokens": 1024},
    ) as stream:  # fmt: skip
        final = await stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    thinking = final.content[0]
    assert thinking.type == "thinking" and thinking.thinking == "Let me think."
    assert "reasoning_effort" in sent(upstream)


async def test_a_cut_stream_is_an_error_event_never_message_stop(
    upstream: Upstream, proxied: str
) -> None:
    upstream.script(event(chunk("partial")), ending="reset")
    kinds: list[str] = []
    async with (
        claude(proxied) as c,
        c.messages.stream(model="m", max_tokens=64, messages=HI) as stream,
    ):
        with pytest.raises(anthropic.APIStatusError) as caught:
            async for ev in stream:
                kinds.append(ev.type)
    assert "message_stop" not in kinds
    assert "content_block_delta" in kinds
    body: Any = caught.value.body
    assert body["error"]["type"] == "api_error"


async def test_an_error_before_content_fails_over_unseen(
    upstream: Upstream, seamline: StartSeamline
) -> None:
    base = await seamline(config_text(("a", upstream.url), ("b", upstream.url)))
    upstream.script(event(b'{"error":{"message":"overloaded now","code":"overloaded"}}'))
    upstream.script(*answer("from b"))
    async with (
        claude(base) as c,
        c.messages.stream(model="m", max_tokens=64, messages=HI) as stream,
    ):
        kinds = [e.type async for e in stream]
        final = await stream.get_final_message()
    assert kinds.count("message_start") == 1
    assert final.content[0].type == "text" and final.content[0].text == "from b"


@pytest.mark.parametrize(
    ("status", "error", "kind"),
    [
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (529, anthropic.InternalServerError, "overloaded_error"),
        (400, anthropic.BadRequestError, "invalid_request_error"),
    ],
)
async def test_upstream_errors_are_anthropic_errors_with_their_status(
    upstream: Upstream, proxied: str, status: int, error: type[Exception], kind: str
) -> None:
    upstream.script(
        b'{"error":{"message":"upstream says no"}}',
        status=status,
        content_type="application/json",
        headers={"Retry-After": "3"} if status == 429 else {},
    )
    async with claude(proxied) as c:
        with pytest.raises(error) as caught:
            await c.messages.create(model="m", max_tokens=8, messages=HI)
    err: Any = caught.value
    assert err.status_code == status
    assert err.body["type"] == "error" and err.body["error"]["type"] == kind
    assert "sk-test" not in json.dumps(err.body)


async def test_a_wrong_key_is_an_anthropic_authentication_error(
    upstream: Upstream, seamline: StartSeamline
) -> None:
    base = await seamline(config_text(("a", upstream.url), server='api_keys = ["good"]'))
    async with claude(base, key="bad") as c:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            await c.messages.create(model="m", max_tokens=8, messages=HI)
    body: Any = caught.value.body
    assert body["error"]["type"] == "authentication_error"
    async with claude(base, key="good") as c:
        upstream.script(*answer("ok"))
        msg = await c.messages.create(model="m", max_tokens=8, messages=HI)
    assert msg.content[0].type == "text" and msg.content[0].text == "ok"
    assert upstream.requests[0]["headers"].get("x-api-key") is None


async def test_a_bad_request_is_an_invalid_request_error(proxied: str) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(proxied + "/messages", data=b"{nope") as r:
            body = await r.json()
        assert r.status == 400 and body["error"]["type"] == "invalid_request_error"
        async with s.post(proxied + "/messages", json={"model": "m", "max_tokens": 1}) as r:
            body = await r.json()
    assert r.status == 400 and "messages" in body["error"]["message"]


async def test_count_tokens_is_an_estimate_that_grows_with_the_text(
    upstream: Upstream, proxied: str
) -> None:
    async with claude(proxied) as c:
        short = await c.messages.count_tokens(model="m", messages=HI)
        long = await c.messages.count_tokens(
            model="m", messages=[{"role": "user", "content": "hello there " * 200}]
        )
    assert 0 < short.input_tokens < long.input_tokens
    assert 300 < long.input_tokens < 1200
    assert upstream.requests == []


async def test_heartbeats_are_anthropic_pings(upstream: Upstream, seamline: StartSeamline) -> None:
    base = await seamline(config_text(("a", upstream.url), server="heartbeat_s = 0.05"))
    upstream.script(event(chunk("slow")), *answer(" answer"), pause=0.2)
    async with aiohttp.ClientSession() as s:
        body = {"model": "m", "max_tokens": 8, "messages": HI, "stream": True}
        async with s.post(base + "/messages", json=body) as r:
            raw = await r.read()
    assert b'event: ping\ndata: {"type": "ping"}' in raw or b"event: ping\n" in raw
    assert b": keep-alive" not in raw
    assert raw.rstrip().endswith(b'{"type":"message_stop"}')


QUIRKS = repaired_quirks(USAGE)


@pytest.mark.parametrize("quirk", sorted(QUIRKS))
async def test_every_quirk_the_chat_route_repairs_gives_the_meant_message(
    upstream: Upstream, proxied: str, quirk: str
) -> None:
    upstream.script(*QUIRKS[quirk], pause=0)
    async with (
        claude(proxied) as c,
        c.messages.stream(model="m", max_tokens=64, messages=HI) as stream,
    ):
        kinds = [e.type async for e in stream]
        final = await stream.get_final_message()
    assert kinds[-1] == "message_stop"
    assert final.content[0].type == "text" and final.content[0].text == "Hello"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (12, 6)


async def test_each_account_is_asked_to_think_in_its_own_words(
    upstream: Upstream, seamline: StartSeamline
) -> None:
    text = config_text(("plain", upstream.url), ("qwen", upstream.url))
    text = text.replace(
        'name = "qwen"', 'name = "qwen"\nreasoning_switch = "enable_thinking"\ntop_k = true'
    )
    base = await seamline(text.replace("[state]", '[routing]\nstrategy = "round_robin"\n[state]'))
    upstream.script(*answer("ok"))
    thinking: Any = {"type": "enabled", "budget_tokens": 2048}
    async with claude(base) as c:
        for _ in range(2):
            await c.messages.create(
                model="m", max_tokens=4096, messages=HI, thinking=thinking, extra_body={"top_k": 5}
            )
    bodies = sorted((sent(upstream, i) for i in range(2)), key=lambda b: "enable_thinking" in b)
    plain, qwen = bodies
    assert "reasoning_effort" in plain and "top_k" not in plain
    assert "enable_thinking" not in plain
    assert qwen["enable_thinking"] is True and qwen["thinking_budget"] == 2048
    assert qwen["top_k"] == 5 and "reasoning_effort" not in qwen


async def test_a_wrong_method_is_an_anthropic_405(proxied: str) -> None:
    async with aiohttp.ClientSession() as s:
        for path in ("/messages", "/messages/count_tokens"):
            async with s.get(proxied + path) as r:
                body = await r.json()
            assert r.status == 405
            assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
