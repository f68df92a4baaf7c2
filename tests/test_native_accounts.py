"""End to end: accounts that speak the Responses API (``api = "responses"``), behind
both fronts, and pools that mix them with chat accounts; judged by the real openai
client."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from support.builders import account, chunk, config_text, event, sse_stream
from support.clients import client
from support.seamline import StartSeamline
from support.upstream import MakeUpstream, Upstream

USAGE = {
    "input_tokens": 9,
    "output_tokens": 4,
    "total_tokens": 13,
    "input_tokens_details": {"cached_tokens": 2},
    "output_tokens_details": {"reasoning_tokens": 0},
}


def response(status: str = "in_progress", output: list[Any] | None = None, **kw: Any) -> Any:
    return {
        "id": "resp_up1", "object": "response", "created_at": 1, "status": status,
        "model": "m", "output": output or [], "parallel_tool_calls": True,
        "tool_choice": "auto", "tools": [], **kw,
    }  # fmt: skip


def message(text: str) -> dict[str, Any]:
    return {
        "type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }  # fmt: skip


def events(*words: str, terminal: str | None = "response.completed") -> list[bytes]:
    """A Responses stream as an upstream writes it: named events, numbered from 0."""
    text = "".join(words)
    part = {"type": "output_text", "text": "", "annotations": []}
    item = {**message(""), "status": "in_progress", "content": []}
    seq: list[dict[str, Any]] = [
        {"type": "response.created", "response": response()},
        {"type": "response.in_progress", "response": response()},
        {"type": "response.output_item.added", "output_index": 0, "item": item},
        {"type": "response.content_part.added", "item_id": "msg_1", "output_index": 0,
         "content_index": 0, "part": part},
    ]  # fmt: skip
    for w in words:
        seq.append({"type": "response.output_text.delta", "item_id": "msg_1",
                    "output_index": 0, "content_index": 0, "delta": w, "logprobs": []})  # fmt: skip
    if terminal is not None:
        seq += [
            {"type": "response.output_text.done", "item_id": "msg_1", "output_index": 0,
             "content_index": 0, "text": text, "logprobs": []},
            {"type": "response.output_item.done", "output_index": 0, "item": message(text)},
            {"type": terminal, "response": response(
                terminal.removeprefix("response."), [message(text)], usage=USAGE)},
        ]  # fmt: skip
    out = []
    for n, ev in enumerate(seq):
        ev["sequence_number"] = n
        data = json.dumps(ev, separators=(",", ":")).encode()
        out.append(b"event: " + ev["type"].encode() + b"\ndata: " + data + b"\n\n")
    return out


def accounts(*specs: tuple[str, str, str]) -> str:
    """A config of these accounts: (name, url, the API it speaks)."""
    return config_text() + "".join(account(name, url, api=api) for name, url, api in specs)


@pytest.fixture
async def ups(make_upstream: MakeUpstream) -> list[Upstream]:
    return [await make_upstream(), await make_upstream()]


def sent(up: Upstream, i: int = -1) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(up.requests[i]["body"])
    return body


# -- a Responses client, a Responses account: passed through ------------------------------


async def test_a_responses_stream_is_passed_through_event_for_event(
    ups: list[Upstream], seamline: StartSeamline
) -> None:
    up = ups[0]
    raw = events("Hel", "lo")
    # Split reads and CRLF line ends: reframed, the events themselves untouched.
    wire = b"".join(raw).replace(b"\n", b"\r\n")
    up.script(*[wire[i : i + 7] for i in range(0, len(wire), 7)], pause=0)
    base = await seamline(accounts(("r", up.url, "responses")))
    async with client(base) as c:
        stream = await c.responses.create(model="m", input="hi", stream=True)
        got: list[Any] = [e async for e in stream]
    assert [e.sequence_number for e in got] == list(range(len(raw)))
    assert [e.model_dump(exclude_none=True) for e in got] == [
        json.loads(r.split(b"data: ", 1)[1]) for r in raw
    ]
    assert got[-1].response.output_text == "Hello"
    assert up.requests[0]["path"] == "/v1/responses"
    assert json.loads(up.requests[0]["body"]) == {"model": "m", "input": "hi", "stream": True}


async def test_a_responses_stream_that_stops_before_its_end_gets_an_error_event(
    ups: list[Upstream], seamline: StartSeamline
) -> None:
    up = ups[0]
    up.script(*events("partial", terminal=None))
    base = await seamline(accounts(("r", up.url, "responses")))
    async with client(base) as c:
        stream = await c.responses.create(model="m", input="hi", stream=True)
        got: list[Any] = [e async for e in stream]
    assert [e.type for e in got][-2:] == ["response.output_text.delta", "error"]
    last = got[-1]
    assert last.type == "error"
    assert last.code == "upstream_truncated"
    assert last.sequence_number == got[-2].sequence_number + 1


async def test_a_whole_responses_answer_is_passed_through(
    ups: list[Upstream], seamline: StartSeamline
) -> None:
    up = ups[0]
    whole = response("completed", [message("whole")], usage=USAGE)
    up.script(json.dumps(whole).encode(), content_type="application/json")
    base = await seamline(accounts(("r", up.url, "responses")))
    async with client(base) as c:
        got = await c.responses.create(model="m", input="hi")
    assert got.id == "resp_up1"
    assert got.output_text == "whole"


# -- a chat client, a Responses account: translated ---------------------------------------


async def test_a_chat_stream_is_made_from_a_responses_stream(
    ups: list[Upstream], seamline: StartSeamline
) -> None:
    up = ups[0]
    up.script(*events("Hel", "lo ", "there"))
    base = await seamline(accounts(("r", up.url, "responses")))
    async with client(base) as c:
        stream = await c.chat.completions.create(
            model="m",
            messages=[{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [ch async for ch in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello there"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 9
    assert up.requests[0]["path"] == "/v1/responses"
    body = sent(up)
    assert body["instructions"] == "sys"
    assert body["stream"] is True


async def test_a_cut_responses_stream_is_a_chat_error_never_a_finish(
    ups: list[Upstream], seamline: StartSeamline
) -> None:
    up = ups[0]
    up.script(*events("part", terminal=None), ending="reset")
    base = await seamline(accounts(("r", up.url, "responses")))
    async with client(base) as c:
        stream = await c.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        seen: list[Any] = []
        with pytest.raises(openai.APIError):
            async for ch in stream:
                seen.append(ch)
    assert "".join(c.choices[0].delta.content or "" for c in seen if c.choices) == "part"
    assert all(c.choices[0].finish_reason is None for c in seen if c.choices)


async def test_a_whole_chat_answer_is_made_from_a_response(
    ups: list[Upstream], seamline: StartSeamline
) -> None:
    up = ups[0]
    whole = response("completed", [message("done")], usage=USAGE)
    up.script(json.dumps(whole).encode(), content_type="application/json")
    base = await seamline(accounts(("r", up.url, "responses")))
    async with client(base) as c:
        got = await c.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}]
        )
    assert got.choices[0].message.content == "done"
    assert got.usage is not None and got.usage.completion_tokens == 4


# -- mixed pools --------------------------------------------------------------------------


async def test_a_responses_account_failing_first_leaves_the_request_to_a_chat_account(
    ups: list[Upstream], seamline: StartSeamline
) -> None:
    native, chat = ups
    native.script(b'{"error":{"message":"down"}}', status=500, content_type="application/json")
    chat.script(*sse_stream("from chat"))
    conf = accounts(("r", native.url, "responses"), ("c", chat.url, "chat"))
    base = await seamline(conf.replace("[state]", '[routing]\nstrategy = "fill_first"\n[state]'))
    async with client(base) as c:
        stream = await c.responses.create(model="m", input="hi", stream=True)
        got: list[Any] = [e async for e in stream]
    assert [e.type for e in got].count("response.created") == 1
    assert got[-1].type == "response.completed"
    assert got[-1].response.output_text == "from chat"
    assert native.requests[0]["path"] == "/v1/responses"
    assert chat.requests[0]["path"] == "/v1/chat/completions"


async def test_an_error_event_first_from_a_responses_account_fails_over(
    ups: list[Upstream], seamline: StartSeamline
) -> None:
    native, chat = ups
    error = {"type": "error", "code": "server_error", "message": "overloaded",
             "sequence_number": 0}  # fmt: skip
    native.script(b"event: error\ndata: " + json.dumps(error).encode() + b"\n\n")
    chat.script(*sse_stream("second"))
    conf = accounts(("r", native.url, "responses"), ("c", chat.url, "chat"))
    base = await seamline(conf.replace("[state]", '[routing]\nstrategy = "fill_first"\n[state]'))
    async with client(base) as c:
        stream = await c.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text = "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
    assert text == "second"
    assert len(native.requests) == 1


async def test_a_chat_request_a_responses_upstream_cannot_serve_goes_to_a_chat_account(
    ups: list[Upstream], seamline: StartSeamline
) -> None:
    native, chat = ups
    chat.script(*sse_stream("only chat"))
    conf = accounts(("r", native.url, "responses"), ("c", chat.url, "chat"))
    base = await seamline(conf.replace("[state]", '[routing]\nstrategy = "fill_first"\n[state]'))
    async with client(base) as c:
        got = await c.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}], n=2
        )
    assert got.choices[0].message.content == "only chat"
    assert native.requests == []


async def test_a_conversation_moves_between_kinds_of_accounts(
    ups: list[Upstream], seamline: StartSeamline
) -> None:
    native, chat = ups
    chat.script(event(chunk("first")), event(chunk(finish="stop")))
    native.script(json.dumps(response("completed", [message("second")])).encode(),
                  content_type="application/json")  # fmt: skip
    conf = accounts(("c", chat.url, "chat"), ("r", native.url, "responses"))
    base = await seamline(conf)  # round robin: the first turn to c, the second to r
    async with client(base) as c:
        one = await c.responses.create(model="m", input="one")
        two = await c.responses.create(model="m", input="two", previous_response_id=one.id)
    assert (one.output_text, two.output_text) == ("first", "second")
    body = sent(native)
    assert "previous_response_id" not in body  # the upstream never saw the first turn
    texts = [json.dumps(item) for item in body["input"]]
    assert ["one" in t for t in texts] == [True, False, False]
    assert "first" in texts[1] and "two" in texts[2]


async def test_an_unknown_previous_id_goes_to_a_responses_account_as_it_came(
    ups: list[Upstream], seamline: StartSeamline
) -> None:
    native, chat = ups
    native.script(json.dumps(response("completed", [message("kept upstream")])).encode(),
                  content_type="application/json")  # fmt: skip
    conf = accounts(("c", chat.url, "chat"), ("r", native.url, "responses"))
    base = await seamline(conf)
    async with client(base) as c:
        got = await c.responses.create(model="m", input="x", previous_response_id="resp_theirs")
    assert got.output_text == "kept upstream"
    assert sent(native)["previous_response_id"] == "resp_theirs"
    assert chat.requests == []


async def test_a_failed_response_before_any_content_fails_over(
    ups: list[Upstream], seamline: StartSeamline
) -> None:
    native, chat = ups
    error = {"code": "rate_limit_exceeded", "message": "slow down"}
    failed = response("failed", error=error)
    frames = [
        {"type": "response.created", "response": response(), "sequence_number": 0},
        {"type": "response.failed", "response": failed, "sequence_number": 1},
    ]
    native.script(*[b"event: " + f["type"].encode() + b"\ndata: " + json.dumps(f).encode()
                    + b"\n\n" for f in frames])  # fmt: skip
    chat.script(*sse_stream("from chat"))
    base = await seamline(
        accounts(("r", native.url, "responses"), ("c", chat.url, "chat")).replace(
            "[state]", '[routing]\nstrategy = "fill_first"\n[state]'
        )
    )
    async with client(base) as c:
        stream = await c.responses.create(model="m", input="hi", stream=True)
        got: list[Any] = [e async for e in stream]
    assert [e.type for e in got].count("response.created") == 1
    assert got[-1].type == "response.completed"
    assert got[-1].response.output_text == "from chat"
    assert len(native.requests) == 1 and len(chat.requests) == 1
