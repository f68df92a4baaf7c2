"""End to end: the Responses front (``/v1/responses``) over chat-completions accounts,
judged by the real openai client's Responses surface."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import openai
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
from support.clients import client
from support.seamline import StartSeamline
from support.upstream import Upstream

USAGE = usage(11, 5, cached=3)


def _usage_stream(*words: str, finish: str = "stop") -> list[bytes]:
    """A chat stream with its usage chunk after the finish, then [DONE]."""
    out = [event(chunk(w)) for w in words]
    out.append(event(chunk(finish=finish)))
    out.append(event(chunk(choices=[], usage=USAGE)))
    out.append(DONE)
    return out


def _sent(upstream: Upstream, i: int = -1) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(upstream.requests[i]["body"])
    return body


async def _events(base: str, **kw: Any) -> list[Any]:
    async with client(base) as c:
        stream = await c.responses.create(model="m", stream=True, **kw)
        return [e async for e in stream]


async def test_a_stream_is_translated_event_by_event_and_completes_with_usage(
    upstream: Upstream, proxied: str
) -> None:
    upstream.script(*_usage_stream("Hel", "lo ", "wörld"))
    events = await _events(proxied, input="hi", instructions="be brief")
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    assert [e.delta for e in events if e.type == "response.output_text.delta"] == [
        "Hel", "lo ", "wörld",
    ]  # fmt: skip
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response
    assert final.output_text == "Hello wörld"
    assert final.usage is not None
    assert (final.usage.input_tokens, final.usage.output_tokens) == (11, 5)
    assert final.usage.input_tokens_details.cached_tokens == 3
    sent = _sent(upstream)
    assert sent["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}


async def test_the_sdks_stream_helper_accumulates_the_final_response(
    upstream: Upstream, proxied: str
) -> None:
    upstream.script(*_usage_stream("a", "b", "c"))
    async with client(proxied) as c, c.responses.stream(model="m", input="hi") as stream:
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert deltas == ["a", "b", "c"]
    assert final.output_text == "abc"
    assert final.status == "completed"


async def test_a_whole_answer_is_one_response_object(upstream: Upstream, proxied: str) -> None:
    completion = {
        "id": "chatcmpl-9", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi there"},
                     "finish_reason": "stop"}],
        "usage": USAGE,
    }  # fmt: skip
    upstream.script(json.dumps(completion).encode(), content_type="application/json")
    async with client(proxied) as c:
        resp = await c.responses.create(model="m", input="hi")
    assert resp.object == "response"
    assert resp.status == "completed"
    assert resp.output_text == "Hi there"
    assert resp.usage is not None and resp.usage.total_tokens == 16
    assert _sent(upstream)["stream"] is False


async def test_a_whole_answer_from_a_streaming_upstream_is_collected(
    upstream: Upstream, proxied: str
) -> None:
    upstream.script(*_usage_stream("x", "y"))
    async with client(proxied) as c:
        resp = await c.responses.create(model="m", input="hi")
    assert resp.output_text == "xy"


async def test_tool_calls_become_function_call_items_with_their_arguments(
    upstream: Upstream, proxied: str
) -> None:
    def call(index: int, **fn: Any) -> bytes:
        tc: dict[str, Any] = {"index": index, "function": fn}
        if "name" in fn:
            tc |= {"id": f"call_{index}", "type": "function"}
        return compact(chunk_object({"tool_calls": [tc]}))

    pieces = [
        event(call(0, name="get_weather", arguments="")),
        event(call(0, arguments='{"city":')),
        event(call(1, name="get_time", arguments='{"tz":"UTC"}')),
        event(call(0, arguments='"Paris"}')),
        event(chunk(finish="tool_calls")),
        DONE,
    ]
    upstream.script(*pieces)
    tools = [
        {"type": "function", "name": "get_weather", "parameters": {"type": "object"}},
        {"type": "function", "name": "get_time", "parameters": {"type": "object"}},
    ]
    events = await _events(proxied, input="weather?", tools=tools)
    assert events[-1].type == "response.completed"
    calls = [o for o in events[-1].response.output if o.type == "function_call"]
    assert [(c.call_id, c.name, c.arguments) for c in calls] == [
        ("call_0", "get_weather", '{"city":"Paris"}'),
        ("call_1", "get_time", '{"tz":"UTC"}'),
    ]
    added = [e for e in events if e.type == "response.output_item.added"]
    assert [e.item.name for e in added] == ["get_weather", "get_time"]
    sent_tools = _sent(upstream)["tools"]
    assert [t["function"]["name"] for t in sent_tools] == ["get_weather", "get_time"]


async def test_a_later_turn_sends_the_whole_conversation_upstream(
    upstream: Upstream, proxied: str
) -> None:
    upstream.script(*_usage_stream("first answer"))
    async with client(proxied) as c:
        first = await c.responses.create(model="m", input="one")
        upstream.scripts[:] = [upstream.scripts[0]]
        second = await c.responses.create(model="m", input="two", previous_response_id=first.id)
    assert second.output_text == "first answer"
    assert _sent(upstream)["messages"] == [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "two"},
    ]


async def test_stored_responses_are_retrieved_and_deleted(upstream: Upstream, proxied: str) -> None:
    upstream.script(*_usage_stream("kept"))
    async with client(proxied) as c:
        events = await _events(proxied, input="x")
        rid = events[-1].response.id
        got = await c.responses.retrieve(rid)
        assert got.id == rid and got.output_text == "kept"
        await c.responses.delete(rid)
        with pytest.raises(openai.NotFoundError) as caught:
            await c.responses.retrieve(rid)
    assert caught.value.code == "response_not_found"


async def test_store_false_keeps_nothing(upstream: Upstream, proxied: str) -> None:
    upstream.script(*_usage_stream("gone"))
    async with client(proxied) as c:
        resp = await c.responses.create(model="m", input="x", store=False)
        with pytest.raises(openai.NotFoundError):
            await c.responses.retrieve(resp.id)
        with pytest.raises(openai.NotFoundError) as caught:
            await c.responses.create(model="m", input="y", previous_response_id=resp.id)
    assert caught.value.code == "previous_response_not_found"
    assert len(upstream.requests) == 1


async def test_a_cut_stream_fails_and_never_completes(upstream: Upstream, proxied: str) -> None:
    upstream.script(event(chunk("partial ")), event(chunk("answer")), ending="reset")
    events = await _events(proxied, input="hi")
    types = [e.type for e in events]
    assert "response.completed" not in types
    assert "response.failed" in types
    assert [e.delta for e in events if e.type == "response.output_text.delta"] == [
        "partial ", "answer",
    ]  # fmt: skip
    failed = next(e for e in events if e.type == "response.failed")
    assert failed.response.status == "failed"
    assert failed.response.error is not None


async def test_a_stream_that_ends_before_its_finish_fails(upstream: Upstream, proxied: str) -> None:
    upstream.script(event(chunk("no finish")))
    events = await _events(proxied, input="hi")
    assert events[-1].type in ("response.failed", "error")
    assert "response.completed" not in [e.type for e in events]


async def test_an_error_event_mid_stream_fails_the_response(
    upstream: Upstream, proxied: str
) -> None:
    error = b'{"error":{"message":"model overloaded","type":"server_error"}}'
    upstream.script(event(chunk("some ")), event(error))
    events = await _events(proxied, input="hi")
    types = [e.type for e in events]
    assert "response.failed" in types and "response.completed" not in types
    failed = next(e for e in events if e.type == "response.failed")
    assert "overloaded" in failed.response.error.message


async def test_a_length_finish_is_incomplete(upstream: Upstream, proxied: str) -> None:
    upstream.script(*_usage_stream("trunc", finish="length"))
    events = await _events(proxied, input="hi", max_output_tokens=1)
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"
    assert _sent(upstream)["max_tokens"] == 1 or _sent(upstream)["max_completion_tokens"] == 1


async def test_failover_before_the_first_content_shows_one_handshake(
    upstream: Upstream, seamline: StartSeamline
) -> None:
    base = await seamline(config_text(("a", upstream.url), ("b", upstream.url)))
    upstream.script(b'{"error":{"message":"boom"}}', status=500, content_type="application/json")
    upstream.script(*_usage_stream("from b"))
    events = await _events(base, input="hi")
    types = [e.type for e in events]
    assert types.count("response.created") == 1
    assert types[-1] == "response.completed"
    assert events[-1].response.output_text == "from b"
    assert len(upstream.requests) == 2


async def test_an_error_event_first_goes_to_the_next_account(
    upstream: Upstream, seamline: StartSeamline
) -> None:
    base = await seamline(config_text(("a", upstream.url), ("b", upstream.url)))
    error = b'{"error":{"message":"upstream overloaded","code":"overloaded"}}'
    upstream.script(event(error))
    upstream.script(*_usage_stream("second"))
    events = await _events(base, input="hi")
    assert [e.type for e in events].count("response.created") == 1
    assert events[-1].response.output_text == "second"


async def test_an_only_account_refusing_is_an_openai_error_with_its_status(
    upstream: Upstream, proxied: str
) -> None:
    upstream.script(
        b'{"error":{"message":"slow down","type":"rate_limit_error"}}',
        status=429,
        content_type="application/json",
        headers={"Retry-After": "7"},
    )
    async with client(proxied) as c:
        with pytest.raises(openai.RateLimitError) as caught:
            await c.responses.create(model="m", input="hi", stream=True)
    assert caught.value.response.headers["retry-after"] == "7"
    assert "sk-test" not in caught.value.response.text


async def test_hosted_tools_are_left_out_and_named_in_a_header(
    upstream: Upstream, proxied: str
) -> None:
    upstream.script(*_usage_stream("ok"))
    async with client(proxied) as c:
        raw = await c.responses.with_raw_response.create(
            model="m", input="hi", tools=[{"type": "web_search"}]
        )
    assert raw.headers["x-seamline-dropped-tools"] == "web_search"
    assert "tools" not in _sent(upstream)
    assert raw.parse().output_text == "ok"
    async with client(proxied) as c:
        streamed = await c.responses.with_raw_response.create(
            model="m", input="hi", tools=[{"type": "web_search"}], stream=True
        )
        assert streamed.headers["x-seamline-dropped-tools"] == "web_search"
        events = [e async for e in streamed.parse()]
    assert events[-1].type == "response.completed"


async def test_a_request_that_depends_on_a_hosted_tool_is_refused(
    upstream: Upstream, proxied: str
) -> None:
    async with client(proxied) as c:
        hosted: dict[str, Any] = {"tools": [{"type": "web_search"}]}
        hosted["tool_choice"] = {"type": "web_search"}
        with pytest.raises(openai.BadRequestError) as caught:
            await c.responses.create(model="m", input="hi", **hosted)
    assert caught.value.status_code == 400
    assert upstream.requests == []


async def test_the_front_checks_the_client_key(upstream: Upstream, seamline: StartSeamline) -> None:
    base = await seamline(config_text(("a", upstream.url), server='api_keys = ["good-key"]'))
    async with client(base, key="wrong") as c:
        with pytest.raises(openai.AuthenticationError):
            await c.responses.create(model="m", input="hi")
    assert upstream.requests == []


async def test_a_body_that_is_not_json_is_an_openai_400(proxied: str) -> None:
    async with aiohttp.ClientSession() as s, s.post(proxied + "/responses", data=b"{nope") as r:
        body = await r.json()
    assert r.status == 400
    assert body["error"]["type"] == "invalid_request_error"


async def test_an_unknown_stored_id_is_an_openai_404(proxied: str) -> None:
    async with aiohttp.ClientSession() as s, s.delete(proxied + "/responses/resp_nope") as r:
        body = await r.json()
    assert r.status == 404
    assert body["error"]["code"] == "response_not_found"


QUIRKS = repaired_quirks(USAGE)


@pytest.mark.parametrize("quirk", sorted(QUIRKS))
async def test_every_quirk_the_chat_route_repairs_gives_the_meant_response(
    upstream: Upstream, proxied: str, quirk: str
) -> None:
    upstream.script(*QUIRKS[quirk], pause=0)
    events = await _events(proxied, input="hi")
    assert events[-1].type == "response.completed"
    final = events[-1].response
    assert final.output_text == "Hello"
    assert final.usage.input_tokens == 11 and final.usage.output_tokens == 5
    assert [e.sequence_number for e in events] == list(range(len(events)))


async def test_reasoning_comes_as_a_reasoning_item_before_the_answer(
    upstream: Upstream, proxied: str
) -> None:
    thinking = [compact(chunk_object({"reasoning_content": w})) for w in ("Let me ", "think.")]
    upstream.script(*[event(p) for p in thinking], *_usage_stream("Answer."))
    events = await _events(proxied, input="hi", reasoning={"effort": "high"})
    final = events[-1].response
    assert [o.type for o in final.output] == ["reasoning", "message"]
    assert final.output_text == "Answer."
    reasoning = "".join(
        e.delta for e in events if e.type in ("response.reasoning_text.delta",
                                             "response.reasoning_summary_text.delta")
    )  # fmt: skip
    assert reasoning == "Let me think."
    assert _sent(upstream)["reasoning_effort"] == "high"


async def test_no_client_reads_continues_or_deletes_another_clients_conversation(
    upstream: Upstream, seamline: StartSeamline
) -> None:
    base = await seamline(
        config_text(("a", upstream.url), server='api_keys = ["key-one", "key-two"]')
    )
    upstream.script(*_usage_stream("one's secret answer"))
    async with client(base, key="key-one") as one, client(base, key="key-two") as two:
        kept = await one.responses.create(model="m", input="mine")
        with pytest.raises(openai.NotFoundError):
            await two.responses.retrieve(kept.id)
        with pytest.raises(openai.NotFoundError):
            await two.responses.create(model="m", input="go on", previous_response_id=kept.id)
        with pytest.raises(openai.NotFoundError):
            await two.responses.delete(kept.id)
        assert (await one.responses.retrieve(kept.id)).output_text == "one's secret answer"
    assert len(upstream.requests) == 1


async def test_a_streamed_conversation_goes_on_turn_after_turn_through_sqlite(
    upstream: Upstream, seamline: StartSeamline, tmp_path: Path
) -> None:
    # Each turn goes on at once after the last one's end, as Codex does.
    state = f'[state]\npath = "{tmp_path / "state.db"}"'
    base = await seamline(config_text(("a", upstream.url), extra=state))
    upstream.script(*_usage_stream("turn"))
    previous = None
    for _ in range(5):
        events = await _events(base, input="go on", previous_response_id=previous)
        assert events[-1].type == "response.completed"
        previous = events[-1].response.id
    assert len(_sent(upstream)["messages"]) == 9  # four turns kept, and this one
