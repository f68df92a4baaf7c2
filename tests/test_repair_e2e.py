"""End to end repairs: scripted upstream bytes -> seamline -> the real openai client.

Each test pins one repair down twice: in the raw bytes a client receives (an aiohttp
client that sees exactly what seamline wrote) and through openai-python, which must
read the repaired stream without an exception and yield what the upstream meant.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import openai
import pytest
from broken_upstreams import SCENARIOS, Scenario
from multidict import CIMultiDictProxy

from support.builders import (
    DONE,
    FILL_FIRST,
    account,
    chunk,
    chunk_object,
    compact,
    conf,
    config_text,
    event,
    key_of,
    usage,
    usage_chunk,
)
from support.clients import client, collect, text_of
from support.logs import log_lines
from support.seamline import StartSeamline
from support.upstream import Upstream, play

FIN = chunk(finish="stop")
BODY: dict[str, Any] = {
    "model": "m",
    "messages": [{"role": "user", "content": "hi"}],
    "stream": True,
}
USAGE = usage(3, 5)
USAGE_CHUNK = usage_chunk(3, 5)


def delta_chunk(
    delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any
) -> bytes:
    """A chat.completion.chunk with an arbitrary delta, from a stream of its own id."""
    return compact(chunk_object(delta, finish, id="chatcmpl-2", created=2, **extra))


async def raw_post(
    base: str, body: dict[str, Any] | None = None, **headers: str
) -> tuple[int, CIMultiDictProxy[str], bytes]:
    """POST a chat request with a plain aiohttp client: status, headers, exact body."""
    async with (
        aiohttp.ClientSession(auto_decompress=False) as s,
        s.post(base + "/chat/completions", json=body or BODY, headers=headers) as r,
    ):
        return r.status, r.headers, await r.read()


def blocks(body: bytes) -> list[bytes]:
    """The blocks of a normalized event stream, blank-line separators removed."""
    assert body.endswith(b"\n\n"), body[-40:]
    return body[:-2].split(b"\n\n")


def last_error(body: bytes) -> dict[str, Any]:
    """The error object of the stream's last event."""
    last = blocks(body)[-1]
    assert last.startswith(b"data: "), last
    err: dict[str, Any] = json.loads(last[6:])["error"]
    return err


def dicts(chunks: list[Any]) -> list[dict[str, Any]]:
    """The chunks the openai client yielded, as the JSON objects they came from."""
    return [c.to_dict() for c in chunks]


async def read_until_error(base: str, **kw: Any) -> tuple[list[Any], openai.APIError]:
    """Stream through the openai client; the chunks it yielded before it raised."""
    got: list[Any] = []
    async with client(base) as c:
        stream = await c.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True, **kw
        )
        with pytest.raises(openai.APIError) as info:
            async for ch in stream:
                got.append(ch)
    return got, info.value


def only(up: Upstream, *pieces: bytes, **kw: Any) -> None:
    """Make these pieces the upstream's answer to every request from now on."""
    up.scripts.clear()
    up.script(*pieces, **kw)


# --- the demo's broken upstreams -----------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=list(SCENARIOS))
async def test_every_broken_upstream_of_the_demo_reads_whole_or_ends_in_an_error(
    upstream: Upstream, proxied: str, scenario: Scenario
) -> None:
    play(upstream, scenario)
    if scenario.through is None:
        with pytest.raises(openai.APIError, match="upstream stream ended"):
            await collect(proxied)
    else:
        assert text_of(await collect(proxied)) == scenario.through


# --- glued events --------------------------------------------------------------------

GLUED_PAYLOADS = [chunk("Hel"), chunk("lo "), chunk("wörld"), FIN]


def glue(*payloads: bytes) -> bytes:
    """One block of data lines that are separate JSON values: events glued together."""
    return b"data: " + b"\ndata: ".join(payloads) + b"\n\n"


# Two events glued together, then a finish glued to [DONE].
GLUED = glue(*GLUED_PAYLOADS[:2]) + glue(*GLUED_PAYLOADS[2:], b"[DONE]")
GLUED_OUT = b"".join(event(p) for p in GLUED_PAYLOADS) + DONE


def split_positions(raw: bytes, count: int = 30) -> list[int]:
    """About ``count`` cut points: spread evenly, and every byte around each glue point."""
    step = max(1, len(raw) // (count // 2))
    spots = set(range(1, len(raw), step))
    at = raw.find(b"\ndata:")
    while at != -1:
        spots.update(range(max(1, at - 2), min(len(raw), at + 8)))
        at = raw.find(b"\ndata:", at + 1)
    return sorted(spots)


async def test_glued_events_come_out_separate_for_every_split(
    upstream: Upstream, proxied: str
) -> None:
    cuts = split_positions(GLUED)
    assert len(cuts) >= 30
    expected = [json.loads(p) for p in GLUED_PAYLOADS]
    async with client(proxied) as c:
        for cut in cuts:
            only(upstream, GLUED[:cut], GLUED[cut:], pause=0.002)
            stream = await c.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}], stream=True
            )
            got = dicts([ch async for ch in stream])
            assert got == expected, cut
    for cut in cuts[:: len(cuts) // 6]:
        only(upstream, GLUED[:cut], GLUED[cut:], pause=0.002)
        assert (await raw_post(proxied))[2] == GLUED_OUT, cut


def tiny(content: str | None = None, finish: str | None = None) -> bytes:
    """The smallest chunk the openai client reads back to the same object."""
    choice: dict[str, Any] = {"index": 0, "delta": {} if content is None else {"content": content}}
    if finish is not None:
        choice["finish_reason"] = finish
    return compact({"id": "c", "choices": [choice]})


TINY_PAYLOADS = [tiny("a"), tiny("b"), tiny(finish="stop")]
TINY = glue(*TINY_PAYLOADS, b"[DONE]")


async def test_short_glued_stream_split_at_every_position(upstream: Upstream, proxied: str) -> None:
    expected = [json.loads(p) for p in TINY_PAYLOADS]
    async with client(proxied) as c:
        for cut in range(1, len(TINY)):
            only(upstream, TINY[:cut], TINY[cut:], pause=0.002)
            stream = await c.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}], stream=True
            )
            assert dicts([ch async for ch in stream]) == expected, cut


async def test_glued_events_sent_one_byte_at_a_time(upstream: Upstream, proxied: str) -> None:
    upstream.script(*[GLUED[i : i + 1] for i in range(len(GLUED))], pause=0)
    status, _, body = await raw_post(proxied)
    assert status == 200
    assert body == GLUED_OUT


@pytest.mark.parametrize(
    "data_lines",
    [
        [b'{"a":', b"1}"],
        [b"{", b'  "a": [1,', b"2]", b"}"],
        [b'{"a": "x"', b', "b": null}'],
    ],
)
async def test_multi_line_json_value_stays_one_event(
    upstream: Upstream, proxied: str, data_lines: list[bytes]
) -> None:
    block = b"".join(b"data: " + line + b"\n" for line in data_lines) + b"\n"
    raw = block + event(FIN) + DONE
    for cut in (0, 3, len(data_lines[0]) + 6, len(block) - 1):
        pieces = [raw[:cut], raw[cut:]] if cut else [raw]
        only(upstream, *pieces, pause=0.002)
        status, _, body = await raw_post(proxied)
        assert status == 200
        assert body == raw, cut


# --- endings -------------------------------------------------------------------------


async def test_finish_without_done_gets_done_appended(upstream: Upstream, proxied: str) -> None:
    upstream.script(event(chunk("a")), event(chunk("b")), event(FIN))
    status, _, body = await raw_post(proxied)
    assert status == 200
    assert body == event(chunk("a")) + event(chunk("b")) + event(FIN) + DONE
    chunks = await collect(proxied)
    assert text_of(chunks) == "ab"
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_usage_chunk_without_done_gets_done_appended(
    upstream: Upstream, proxied: str
) -> None:
    upstream.script(event(chunk("a")), event(FIN), event(USAGE_CHUNK))
    status, _, body = await raw_post(proxied, {**BODY, "stream_options": {"include_usage": True}})
    assert status == 200
    assert body == event(chunk("a")) + event(FIN) + event(USAGE_CHUNK) + DONE
    chunks = await collect(proxied, stream_options={"include_usage": True})
    assert text_of(chunks) == "a"
    assert chunks[-1].choices == []
    assert chunks[-1].usage.total_tokens == 8


async def test_usage_chunk_seamline_asked_for_is_not_forwarded(
    upstream: Upstream, proxied: str
) -> None:
    upstream.script(event(chunk("a")), event(FIN), event(USAGE_CHUNK))
    status, _, body = await raw_post(proxied)
    sent = json.loads(upstream.requests[0]["body"])
    assert sent["stream_options"] == {"include_usage": True}
    assert status == 200
    assert body == event(chunk("a")) + event(FIN) + DONE
    chunks = await collect(proxied)
    assert [c.usage for c in chunks] == [None, None]


NO_FINISH = b'"choices":[{"index":0,"delta":{}}]'

USAGE_OBJ = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
# Usage chunks as LiteLLM and others shape them: beside the usage, choices that carry
# nothing (an empty delta, a null finish_reason, a role alone).
ODD_USAGE_CHUNKS = {
    "litellm_chat": {"choices": [{"index": 0, "delta": {}}]},
    "null_finish": {"choices": [{"index": 0, "delta": {"content": None}, "finish_reason": None}]},
    "role_only": {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
    "no_choices_key": {},
}


@pytest.mark.parametrize("shape", sorted(ODD_USAGE_CHUNKS))
async def test_a_usage_chunk_of_any_shape_seamline_asked_for_is_not_forwarded(
    upstream: Upstream, proxied: str, shape: str
) -> None:
    odd = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        **ODD_USAGE_CHUNKS[shape],
        "usage": USAGE_OBJ,
    }
    upstream.script(event(chunk("a")), event(FIN), event(compact(odd)), DONE)
    chunks = await collect(proxied)
    # Exactly the stream the client would have had without the option.
    assert text_of(chunks) == "a"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)
    _, _, body = await raw_post(proxied)
    assert body == event(chunk("a")) + event(FIN) + DONE


async def test_a_usage_chunk_the_client_asked_for_is_kept_whatever_its_shape(
    upstream: Upstream, proxied: str
) -> None:
    odd = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    odd |= {"choices": [{"index": 0, "delta": {}}], "usage": USAGE_OBJ}
    upstream.script(event(chunk("a")), event(FIN), event(compact(odd)), DONE)
    chunks = await collect(proxied, stream_options={"include_usage": True})
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 8


async def test_a_finish_chunk_that_carries_the_usage_is_never_dropped(
    upstream: Upstream, proxied: str
) -> None:
    last = chunk(finish="stop", usage=USAGE_OBJ)
    upstream.script(event(chunk("a")), event(last), DONE)
    chunks = await collect(proxied)
    assert [c.choices[0].finish_reason for c in chunks] == [None, "stop"]


async def test_a_completions_usage_chunk_seamline_asked_for_is_not_forwarded(
    upstream: Upstream, proxied: str
) -> None:
    def text_chunk(text: str, finish: str | None = None) -> bytes:
        obj = {"id": "c", "object": "text_completion", "created": 1, "model": "m"}
        obj["choices"] = [{"index": 0, "text": text, "finish_reason": finish}]
        return compact(obj)

    usage = {"id": "c", "object": "text_completion", "created": 1, "model": "m"}
    usage |= {"choices": [{"index": 0}], "usage": USAGE_OBJ}
    upstream.script(
        event(text_chunk("a")), event(text_chunk("", "stop")), event(compact(usage)), DONE
    )
    async with client(proxied) as c:
        stream = await c.completions.create(model="m", prompt="hi", stream=True)
        got = [ch async for ch in stream]
    assert [ch.choices[0].finish_reason for ch in got] == [None, "stop"]
    assert all(ch.usage is None for ch in got)


@pytest.mark.parametrize("ending", ["end", "reset"])
@pytest.mark.parametrize(
    "pieces",
    [
        [event(chunk("par")), event(chunk("tial"))],
        [event(chunk("par")), b"data: " + chunk("tial")],  # cut inside an event
        [event(chunk("par")), event(USAGE_CHUNK.replace(b'"choices":[]', NO_FINISH))],
    ],
    ids=["between_events", "inside_an_event", "usage_without_finish"],
)
async def test_end_before_finish_reason_is_a_truncation_error(
    upstream: Upstream, proxied: str, ending: str, pieces: list[bytes]
) -> None:
    upstream.script(*pieces, ending=ending)
    status, _, body = await raw_post(proxied)
    assert status == 200
    assert body.startswith(event(chunk("par")))
    assert b"[DONE]" not in body
    err = last_error(body)
    assert err["type"] == "upstream_error"
    assert "truncated" in err["message"]
    got, exc = await read_until_error(proxied)
    assert text_of(got) in ("par", "partial")
    assert "truncated" in exc.message


@pytest.mark.parametrize("ending", ["reset", "hang"])
async def test_a_cut_after_the_finish_reason_is_still_reported(
    upstream: Upstream, seamline: StartSeamline, ending: str
) -> None:
    # The text is whole, but the stream was cut (its usage chunk or [DONE] lost): the
    # client gets the text and then an error event, never a clean end.
    base = await seamline(config_text(("acc1", upstream.url), extra="[timeouts]\nidle = 0.3"))
    upstream.script(event(chunk("whole")), event(FIN), ending=ending)
    status, _, body = await raw_post(base)
    assert status == 200
    assert body.startswith(event(chunk("whole")) + event(FIN))
    assert DONE not in body
    assert last_error(body)["type"] == "upstream_error"
    got, exc = await read_until_error(base)
    assert text_of(got) == "whole"
    assert exc.message


async def test_nothing_after_done_is_forwarded(upstream: Upstream, proxied: str) -> None:
    upstream.script(
        event(chunk("a")),
        event(FIN) + DONE + event(chunk("late")),
        b": comment\n\n" + DONE + b'event: error\ndata: {"message": "late error"}\n\n',
        event(chunk("later")),
    )
    status, _, body = await raw_post(proxied)
    assert status == 200
    assert body == event(chunk("a")) + event(FIN) + DONE
    chunks = await collect(proxied)
    assert text_of(chunks) == "a"


async def test_done_ends_the_client_stream_while_the_upstream_stays_open(
    upstream: Upstream, seamline: StartSeamline
) -> None:
    """A client that reads to the end (curl, openai-node) must not wait on the upstream."""
    base = await seamline(config_text(("acc1", upstream.url), server="heartbeat_s = 0.1"))
    upstream.script(event(chunk("a")), event(FIN) + DONE, ending="hang")
    started = time.monotonic()
    status, _, body = await asyncio.wait_for(raw_post(base), 5)
    assert status == 200
    assert body == event(chunk("a")) + event(FIN) + DONE
    assert time.monotonic() - started < 2


# --- mismatches: JSON <-> stream -----------------------------------------------------

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
                "content": "Hi é 😀",
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
COMPLETION_CALLS = COMPLETION["choices"][0]["message"]["tool_calls"]


def reasoning_of(chunks: list[Any]) -> str:
    out = ""
    for c in chunks:
        if c.choices:
            extra = c.choices[0].delta.model_extra or {}
            out += extra.get("reasoning_content") or ""
    return out


def tool_calls_of(chunks: list[Any]) -> list[dict[str, Any]]:
    """Tool call deltas merged by index, the way a client would merge them."""
    calls: dict[int, dict[str, Any]] = {}
    for c in chunks:
        for tc in (c.choices[0].delta.tool_calls or []) if c.choices else []:
            slot = calls.setdefault(
                tc.index, {"id": None, "type": None, "function": {"name": "", "arguments": ""}}
            )
            slot["id"] = tc.id or slot["id"]
            slot["type"] = tc.type or slot["type"]
            if tc.function is not None:
                slot["function"]["name"] += tc.function.name or ""
                slot["function"]["arguments"] += tc.function.arguments or ""
    return [calls[i] for i in sorted(calls)]


@pytest.mark.parametrize("include_usage", [False, True])
async def test_streaming_client_answered_with_a_json_completion_gets_a_chunk_stream(
    upstream: Upstream, proxied: str, include_usage: bool
) -> None:
    upstream.script(compact(COMPLETION), content_type="application/json")
    kw: dict[str, Any] = {"stream_options": {"include_usage": True}} if include_usage else {}
    chunks = await collect(proxied, **kw)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert text_of(chunks) == "Hi é 😀"
    assert reasoning_of(chunks) == "let me think"
    assert tool_calls_of(chunks) == COMPLETION_CALLS
    answer = [c for c in chunks if c.choices]
    assert [c.choices[0].finish_reason for c in answer] == [None, "tool_calls"]
    assert all(c.id == "chatcmpl-9" and c.model == "m" for c in chunks)
    if include_usage:
        assert chunks[-1].choices == []
        assert chunks[-1].usage.to_dict() == USAGE
        assert len(chunks) == len(answer) + 1
    else:
        assert len(chunks) == len(answer)
        assert all(c.usage is None for c in chunks)
    status, headers, body = await raw_post(
        proxied, {**BODY, "stream_options": kw.get("stream_options")}
    )
    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    assert body.endswith(b"\n\n" + DONE)
    assert (b'"usage"' in body) is include_usage


@pytest.mark.parametrize(
    "label", ["text/plain; charset=utf-8", "application/json", "application/octet-stream", ""]
)
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
async def test_an_event_stream_with_a_wrong_content_type_is_still_relayed_as_one(
    upstream: Upstream, proxied: str, label: str, stream: bool
) -> None:
    # Told apart by its first bytes (here a BOM and a comment first); streamed as it
    # comes, not read whole first, and repaired like any other stream.
    upstream.script(
        b"\xef\xbb",  # the first read ends inside the BOM: too early to tell
        b"\xbf: hello\r\n\r\n",
        event(chunk("wrong ")),
        event(chunk("label")),
        event(FIN),
        DONE,
        content_type=label,
    )
    if stream:
        status, headers, body = await raw_post(proxied)
        assert status == 200
        assert headers["Content-Type"] == "text/event-stream"
        assert (
            body
            == b": hello\n\n" + event(chunk("wrong ")) + event(chunk("label")) + event(FIN) + DONE
        )
        assert text_of(await collect(proxied)) == "wrong label"
    else:
        async with client(proxied) as c:
            res = await c.chat.completions.create(model="m", messages=BODY["messages"])
        assert res.choices[0].message.content == "wrong label"


async def test_a_silent_answer_with_a_wrong_content_type_times_out_as_idle(
    upstream: Upstream, seamline: StartSeamline
) -> None:
    # Telling what the body is waits for its first bytes, under the idle timeout.
    base = await seamline(config_text(("acc1", upstream.url), extra="[timeouts]\nidle = 0.3"))
    upstream.script(content_type="text/plain", ending="hang")
    started = time.monotonic()
    status, _, body = await raw_post(base)
    assert time.monotonic() - started < 3
    assert status == 504
    assert "sent nothing for 0.3s" in json.loads(body)["error"]["message"]


async def test_a_json_completion_labelled_as_text_reaches_a_json_client_as_json(
    upstream: Upstream, proxied: str
) -> None:
    upstream.script(compact(COMPLETION), content_type="text/plain")
    status, headers, body = await raw_post(proxied, {**BODY, "stream": False})
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert body == compact(COMPLETION)
    async with client(proxied) as c:
        res = await c.chat.completions.create(model="m", messages=BODY["messages"])
    assert res.choices[0].message.content == "Hi é 😀"


@pytest.mark.parametrize(
    ("error", "status", "exc_type"),
    [
        ({"message": "boom", "type": "server_error"}, 500, openai.InternalServerError),
        ({"message": "boom"}, 502, openai.InternalServerError),
        ({"message": "slow down", "code": 429}, 429, openai.RateLimitError),
        # An error named by words, in OpenAI's, Anthropic's and DashScope's vocabularies.
        (
            {"message": "slow", "type": "requests", "code": "rate_limit_exceeded"},
            429,
            openai.RateLimitError,
        ),
        ({"message": "too long", "type": "invalid_request_error"}, 400, openai.BadRequestError),
        ({"message": "who", "type": "authentication_error"}, 401, openai.AuthenticationError),
        ({"message": "bad", "code": "InvalidParameter"}, 400, openai.BadRequestError),
        ({"message": "slow", "code": "Throttling.RateQuota"}, 429, openai.RateLimitError),
        ({"message": "busy", "type": "overloaded_error"}, 529, openai.InternalServerError),
    ],
)
async def test_streaming_client_answered_with_a_json_error_gets_the_error(
    upstream: Upstream,
    proxied: str,
    error: dict[str, Any],
    status: int,
    exc_type: type[openai.APIStatusError],
) -> None:
    upstream.script(compact({"error": error}), content_type="application/json")
    got_status, headers, body = await raw_post(proxied)
    assert got_status == status
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(body)["error"]["message"] == error["message"]
    with pytest.raises(exc_type) as info:
        await collect(proxied)
    assert info.value.status_code == status
    assert error["message"] in info.value.message


BARE_ERROR = b'{"error": {"message": "boom"}}\n'


async def test_bare_error_line_first_in_a_stream_is_an_http_error(
    upstream: Upstream, proxied: str
) -> None:
    upstream.script(BARE_ERROR, event(chunk("never")))
    status, headers, body = await raw_post(proxied)
    assert status == 502
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(body)["error"]["message"] == "boom"
    with pytest.raises(openai.APIStatusError) as info:
        await collect(proxied)
    assert info.value.status_code == 502
    assert "boom" in info.value.message


async def test_bare_error_line_after_chunks_is_an_error_event(
    upstream: Upstream, proxied: str
) -> None:
    upstream.script(event(chunk("a")), event(chunk("b")) + BARE_ERROR)
    status, _, body = await raw_post(proxied)
    assert status == 200
    assert body.startswith(event(chunk("a")) + event(chunk("b")))
    assert last_error(body)["message"] == "boom"
    assert b"[DONE]" not in body
    got, exc = await read_until_error(proxied)
    assert text_of(got) == "ab"
    assert exc.message == "boom"


def stream_answer() -> list[bytes]:
    """A streamed answer with reasoning, content and two tool calls in interleaved pieces."""
    calls: list[dict[str, Any]] = [
        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather"}},
        {"index": 0, "function": {"arguments": '{"ci'}},
        {"index": 1, "id": "call_2", "type": "function", "function": {"name": "get_time"}},
        {"index": 0, "function": {"arguments": 'ty":"Pa'}},
        {"index": 1, "function": {"arguments": "{}"}},
        {"index": 0, "function": {"arguments": 'ris"}'}},
    ]
    payloads = [
        delta_chunk({"role": "assistant", "content": ""}),
        delta_chunk({"reasoning_content": "let me "}),
        delta_chunk({"reasoning_content": "think"}),
        delta_chunk({"content": "Hi é "}),
        delta_chunk({"content": "😀"}),
        *(delta_chunk({"tool_calls": [call]}) for call in calls),
        delta_chunk(finish="tool_calls"),
        USAGE_CHUNK,
    ]
    return [event(p) for p in payloads] + [DONE]


async def test_non_streaming_client_answered_with_a_stream_gets_one_completion(
    upstream: Upstream, proxied: str
) -> None:
    upstream.script(*stream_answer())
    async with client(proxied) as c:
        res = await c.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}]
        )
    assert res.object == "chat.completion"
    assert res.id == "chatcmpl-2"
    msg = res.choices[0].message
    assert msg.role == "assistant"
    assert msg.content == "Hi é 😀"
    assert (msg.model_extra or {})["reasoning_content"] == "let me think"
    assert [tc.to_dict() for tc in msg.tool_calls or []] == COMPLETION_CALLS
    assert res.choices[0].finish_reason == "tool_calls"
    assert res.usage is not None and res.usage.to_dict() == USAGE
    assert json.loads(upstream.requests[0]["body"]).get("stream") is None


async def test_non_streaming_client_answered_with_a_truncated_stream_gets_an_error(
    upstream: Upstream, proxied: str
) -> None:
    upstream.script(*stream_answer()[:4])
    with pytest.raises(openai.APIStatusError) as info:
        async with client(proxied) as c:
            await c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 502
    assert "truncated" in info.value.message


async def test_force_stream_account_streams_upstream_and_answers_json(
    upstream: Upstream, seamline: StartSeamline
) -> None:
    base = await seamline(config_text() + account("forced", upstream.url, force_stream=True))
    upstream.script(*stream_answer())
    async with client(base) as c:
        res = await c.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}]
        )
    sent = json.loads(upstream.requests[0]["body"])
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["messages"] == [{"role": "user", "content": "x"}]
    assert res.choices[0].message.content == "Hi é 😀"
    assert [tc.id for tc in res.choices[0].message.tool_calls or []] == ["call_1", "call_2"]
    assert res.choices[0].finish_reason == "tool_calls"
    assert res.usage is not None and res.usage.total_tokens == 8


# --- heartbeats ----------------------------------------------------------------------

KEEPALIVE = b": keep-alive\n\n"


async def test_heartbeats_fill_a_silent_upstream(
    upstream: Upstream, seamline: StartSeamline
) -> None:
    base = await seamline(config_text(("acc1", upstream.url), server="heartbeat_s = 0.2"))
    rest = event(chunk("b")) + event(FIN) + DONE
    upstream.script(event(chunk("a")), rest, pause=0.7)
    status, _, body = await raw_post(base)
    assert status == 200
    first, after = body.split(event(chunk("a")), 1)
    assert first == b""
    beats, tail = after.split(rest, 1)
    assert tail == b""
    assert beats == KEEPALIVE * (len(beats) // len(KEEPALIVE))
    assert 2 <= len(beats) // len(KEEPALIVE) <= 4
    chunks = await collect(base)
    assert dicts(chunks) == [json.loads(p) for p in (chunk("a"), chunk("b"), FIN)]


async def test_heartbeat_zero_sends_none(upstream: Upstream, seamline: StartSeamline) -> None:
    base = await seamline(config_text(("acc1", upstream.url), server="heartbeat_s = 0"))
    upstream.script(event(chunk("a")), event(FIN) + DONE, pause=0.5)
    status, _, body = await raw_post(base)
    assert status == 200
    assert body == event(chunk("a")) + event(FIN) + DONE


# --- timeouts ------------------------------------------------------------------------


def two_accounts(first: str, second: str, first_timeouts: str = "", timeouts: str = "") -> str:
    """Two accounts tried in order (fill_first), the first with timeouts of its own."""
    one = account("one", first) + f"[accounts.timeouts]\n{first_timeouts}\n"
    return conf(one, account("two", second), routing=FILL_FIRST, timeouts=timeouts, heartbeat_s=0)


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A loopback port whose accept queue is full: a connect there hangs (Linux)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("a full accept queue drops SYNs only on Linux")
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        fillers.append(s)
    probe = socket.socket()
    probe.settimeout(0.2)
    try:
        probe.connect(("127.0.0.1", port))
    except TimeoutError:
        pass
    else:
        pytest.skip("this kernel accepts connections past a full backlog")
    finally:
        probe.close()
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        for s in fillers:
            s.close()
        srv.close()


async def test_connect_timeout_of_the_account_fails_over(
    upstream: Upstream, seamline: StartSeamline, black_hole: str
) -> None:
    base = await seamline(
        two_accounts(
            black_hole,
            upstream.url,
            "connect = 0.2",
            "connect = 30",
        )
    )
    upstream.script(event(chunk("ok")), event(FIN), DONE)
    started = time.monotonic()
    chunks = await collect(base)
    assert time.monotonic() - started < 3
    assert text_of(chunks) == "ok"
    assert upstream.requests[0]["headers"]["Authorization"] == f"Bearer {key_of('two')}"


async def test_connect_timeout_of_the_only_account_is_a_504(
    seamline: StartSeamline, black_hole: str
) -> None:
    base = await seamline(config_text(("acc1", black_hole), extra="[timeouts]\nconnect = 0.2"))
    status, _, body = await raw_post(base)
    assert status == 504
    err = json.loads(body)["error"]
    assert err["code"] == "upstream_timeout"
    assert "connect timed out after 0.2s" in err["message"]


async def test_headers_timeout_of_the_account_fails_over(
    upstream: Upstream, seamline: StartSeamline
) -> None:
    base = await seamline(
        two_accounts(
            upstream.url,
            upstream.url,
            "headers = 0.2",
            "headers = 30",
        )
    )
    upstream.script(event(chunk("slow")), event(FIN), DONE, delay_headers=2)
    upstream.script(event(chunk("fast")), event(FIN), DONE)
    started = time.monotonic()
    chunks = await collect(base)
    assert time.monotonic() - started < 1.5
    assert text_of(chunks) == "fast"
    keys = [r["headers"]["Authorization"] for r in upstream.requests]
    assert keys == [f"Bearer {key_of('one')}", f"Bearer {key_of('two')}"]


@pytest.mark.parametrize(
    ("global_idle", "account_idle", "times_out"),
    [(30.0, 0.3, True), (0.2, 30.0, False)],
)
async def test_idle_timeout_after_the_first_byte_per_account_override_wins(
    upstream: Upstream,
    seamline: StartSeamline,
    global_idle: float,
    account_idle: float,
    times_out: bool,
) -> None:
    text = config_text(("acc1", upstream.url), extra=f"[timeouts]\nidle = {global_idle}")
    text += f"[accounts.timeouts]\nidle = {account_idle}\n"
    base = await seamline(text)
    upstream.script(event(chunk("a")), event(chunk("b")), event(FIN) + DONE, pause=0.5)
    status, _, body = await raw_post(base)
    assert status == 200
    if times_out:
        assert body.startswith(event(chunk("a")))
        err = last_error(body)
        assert err["type"] == "upstream_error"
        assert err["code"] == "upstream_timeout"
        assert f"sent nothing for {account_idle:g}s" in err["message"]
    else:
        assert body == event(chunk("a")) + event(chunk("b")) + event(FIN) + DONE


async def test_a_slow_client_does_not_make_a_busy_upstream_idle(
    upstream: Upstream, seamline: StartSeamline
) -> None:
    # The client stops reading for longer than the idle timeout, with more data than
    # the sockets between can hold: seamline waits on its client write, not on the
    # upstream, so the upstream must not be declared idle.
    base = await seamline(config_text(("acc1", upstream.url), extra="[timeouts]\nidle = 0.3"))
    pieces = [event(chunk("x" * 65536)) for _ in range(384)]
    upstream.script(*pieces, event(FIN), DONE, pause=0)
    async with (
        aiohttp.ClientSession() as s,
        s.post(base + "/chat/completions", json=BODY) as r,
    ):
        await asyncio.sleep(1.2)
        body = await r.read()
    assert body == b"".join(pieces) + event(FIN) + DONE


async def test_total_timeout_ends_the_stream_with_an_error_event(
    upstream: Upstream, seamline: StartSeamline
) -> None:
    text = config_text(("acc1", upstream.url), extra="[timeouts]\ntotal = 30\nidle = 30")
    text += "[accounts.timeouts]\ntotal = 0.5\n"
    base = await seamline(text)
    upstream.script(*[event(chunk(str(i))) for i in range(10)], event(FIN), DONE, pause=0.1)
    started = time.monotonic()
    status, _, body = await raw_post(base)
    assert time.monotonic() - started < 1.5
    assert status == 200
    assert body.startswith(event(chunk("0")))
    err = last_error(body)
    assert err["type"] == "upstream_error"
    assert err["code"] == "upstream_timeout"
    got, _ = await read_until_error(base)
    assert 1 <= len(got) < 10


async def test_total_timeout_message_names_the_total_timeout(
    upstream: Upstream, seamline: StartSeamline
) -> None:
    base = await seamline(
        config_text(("acc1", upstream.url), extra="[timeouts]\ntotal = 0.3\nidle = 30")
    )
    upstream.script(*[event(chunk(str(i))) for i in range(10)], pause=0.1)
    _, _, body = await raw_post(base)
    message = last_error(body)["message"]
    assert "0.3s" in message
    assert "sent nothing" not in message


# --- logs: non-JSON payloads and every repair kind -----------------------------------


async def summary(out: io.StringIO) -> dict[str, Any]:
    """The one request summary line; it is written just after the response ends."""
    for _ in range(100):
        found = [ln for ln in log_lines(out) if ln["event"] == "request"]
        if found:
            assert len(found) == 1
            return found[0]
        await asyncio.sleep(0.01)
    raise AssertionError("no summary line")


async def test_non_json_payload_is_forwarded_unchanged_and_counted(
    upstream: Upstream, proxied: str, debug_log_output: io.StringIO
) -> None:
    raw = event(chunk("a")) + b"data: hello world\n\n" + event(FIN) + DONE
    upstream.script(raw)
    status, _, body = await raw_post(proxied)
    assert status == 200
    assert body == raw
    assert (await summary(debug_log_output))["repairs"] == {"non_json_payload": 1}


REPAIRS: dict[str, tuple[list[bytes], bool]] = {
    # kind: (upstream pieces, the client streams)
    "glued_events_split": ([glue(chunk("a"), FIN), DONE], True),
    "done_appended": ([event(chunk("a")), event(FIN)], True),
    "truncated": ([event(chunk("a"))], True),
    "after_done_dropped": ([event(FIN), DONE + event(chunk("late"))], True),
    "ping_event_to_comment": ([b"event: ping\ndata: {}\n\n", event(FIN), DONE], True),
    "error_event": ([event(chunk("a")), b'event: error\ndata: {"message": "x"}\n\n'], True),
    "empty_block_dropped": ([b"data:\n\n", event(FIN), DONE], True),
    "non_json_payload": ([b"data: hello\n\n", event(FIN), DONE], True),
    "stray_line_dropped": ([b"garbage line\n", event(FIN), DONE], True),
    "bare_error_line": ([event(chunk("a")), BARE_ERROR], True),
    "stream_aggregated": ([event(chunk("a")), event(FIN), DONE], False),
}


@pytest.mark.parametrize("kind", [*sorted(REPAIRS), "json_to_stream"])
async def test_every_repair_is_traced_and_counted(
    upstream: Upstream, proxied: str, debug_log_output: io.StringIO, kind: str
) -> None:
    if kind == "json_to_stream":
        upstream.script(compact(COMPLETION), content_type="application/json")
        stream = True
    else:
        pieces, stream = REPAIRS[kind]
        upstream.script(*pieces)
    status, _, _ = await raw_post(proxied, {**BODY, "stream": stream})
    assert status in (200, 502)
    s = await summary(debug_log_output)
    assert s["repairs"].get(kind, 0) >= 1, s
    traced = [ln for ln in log_lines(debug_log_output) if ln["event"] == "repair"]
    assert kind in {ln["kind"] for ln in traced}
    assert all(ln["request_id"] == s["request_id"] for ln in traced)


async def test_repairs_inside_an_aggregated_stream_are_counted(
    upstream: Upstream, proxied: str, debug_log_output: io.StringIO
) -> None:
    upstream.script(glue(chunk("a"), FIN))
    async with client(proxied) as c:
        res = await c.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}]
        )
    assert res.choices[0].message.content == "a"
    s = await summary(debug_log_output)
    assert s["repairs"] == {"stream_aggregated": 1, "glued_events_split": 1, "done_appended": 1}
    kinds = {ln["kind"] for ln in log_lines(debug_log_output) if ln["event"] == "repair"}
    assert kinds == set(s["repairs"])
