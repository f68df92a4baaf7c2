"""End to end: several loopback upstreams as accounts behind seamline.

Failover before the first byte, account health (cooldowns, quota, auth, circuit
breaker), local limits, routing strategies, usage accounting, persisted state, OAuth
accounts and the admin view, each through the real proxy and real clients.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from openai.types.chat import ChatCompletionMessageParam
from pytest_aiohttp import AiohttpServer

from proxy.pool.accounts import Limits, Pool
from proxy.state.store import MemoryStore, Persister
from support.builders import (
    ADMIN_KEY,
    FILL_FIRST,
    account,
    chunk,
    completion,
    conf,
    error_body,
    event,
    key_of,
    sse_stream,
    toml,
    usage_chunk,
)
from support.clients import (
    Reply,
    accounts,
    admin_get,
    ask,
    client,
    fetch_ready,
    post,
    request_body,
    text_of,
)
from support.logs import log_lines
from support.ports import closed_port_url
from support.seamline import StartSeamline, start_seamline
from support.upstream import MakeUpstream, Upstream, counts, fail, ok

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def oauth_account(name: str, creds: Path, token_url: str, **opts: Any) -> str:
    return "[[accounts]]\n" + toml(
        name=name, kind="qwen-oauth", credentials=str(creds), token_url=token_url, **opts
    )


# -- clients ------------------------------------------------------------------------------


async def post_many(base: str, n: int, concurrency: int = 16) -> list[Reply]:
    gate = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as s:

        async def one() -> Reply:
            async with gate:
                return await post(base, None, s)

        return await asyncio.gather(*(one() for _ in range(n)))


def seconds_until(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp() - time.time()


def next_utc_midnight() -> float:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return (today + timedelta(days=1)).timestamp()


async def until(cond: Callable[[], bool | Awaitable[bool]]) -> None:
    """Wait (a few seconds at most) until ``cond()`` holds."""
    async with asyncio.timeout(3):
        while True:
            result = cond()
            if result if isinstance(result, bool) else await result:
                return
            await asyncio.sleep(0.005)


async def until_released(base: str, name: str) -> None:
    """Wait until the account has no request in flight (its client went away)."""

    async def released() -> bool:
        return bool((await accounts(base))[name]["in_flight"] == 0)

    await until(released)


# -- 1. failover before the first byte ----------------------------------------------------

FAILOVER_CASES = ["401", "403", "408", "429", "500", "502", "503", "refused", "header_timeout"]


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
@pytest.mark.parametrize("failure", FAILOVER_CASES)
async def test_first_account_failing_is_invisible_and_the_second_answers(
    make_upstream: MakeUpstream, seamline: StartSeamline, failure: str, stream: bool
) -> None:
    a, b = await make_upstream(), await make_upstream()
    ok(b, "from B", stream)
    a_url = a.url
    if failure == "refused":
        a_url = closed_port_url()
    elif failure == "header_timeout":
        ok(a, "from A", stream, delay_headers=0.6)
    else:
        fail(a, int(failure))
    base = await seamline(
        conf(
            account("A", a_url),
            account("B", b.url),
            routing=FILL_FIRST,
            timeouts="headers = 0.2",
        )
    )
    assert await ask(base, stream) == "from B"
    assert counts(a, b) == [0 if failure == "refused" else 1, 1]


async def test_failover_hides_the_failure_byte_for_byte(
    make_upstream: MakeUpstream, seamline: StartSeamline
) -> None:
    a, b = await make_upstream(), await make_upstream()
    fail(a, 503)
    b.script(*sse_stream("from B"))
    base = await seamline(conf(account("A", a.url), account("B", b.url)))
    reply = await post(base, request_body(stream=True))
    assert reply.status == 200
    assert reply.body == b"".join(sse_stream("from B"))
    # B got the same request A got, with its own key.
    assert a.requests[0]["body"] == b.requests[0]["body"]
    assert b.requests[0]["headers"]["Authorization"] == f"Bearer {key_of('B')}"


async def test_max_attempts_caps_the_failover(
    make_upstream: MakeUpstream, seamline: StartSeamline
) -> None:
    a, b = await make_upstream(), await make_upstream()
    fail(a, 503)
    ok(b, "from B", False)
    base = await seamline(
        conf(account("A", a.url), account("B", b.url), routing=f"{FILL_FIRST}\nmax_attempts = 1")
    )
    reply = await post(base)
    # The one account tried failed: its answer, minus the key it echoed, is the client's.
    assert reply.status == 503
    assert "failed 503" in reply.json()["error"]["message"]
    assert key_of("A").encode() not in reply.body
    assert counts(a, b) == [1, 0]


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
@pytest.mark.parametrize("status", [400, 404, 413, 422])
async def test_client_errors_go_back_unchanged_and_the_second_account_is_never_called(
    make_upstream: MakeUpstream, seamline: StartSeamline, status: int, stream: bool
) -> None:
    a, b = await make_upstream(), await make_upstream()
    body = error_body(f"A says no ({status})", code="bad_request")
    fail(a, status, body)
    ok(b, "from B", stream)
    base = await seamline(conf(account("A", a.url), account("B", b.url), routing=FILL_FIRST))
    sent = request_body(stream)
    reply = await post(base, sent)
    assert (reply.status, reply.body) == (status, body)
    assert reply.headers["Content-Type"].startswith("application/json")
    assert b.requests == []
    # A 400 that does not name the stream_options seamline added is sent once.
    assert len(a.requests) == 1
    rows = await accounts(base)
    assert rows["A"]["state"] == "available"
    assert rows["A"]["errors"] == 0


PYDANTIC_422 = json.dumps(
    {
        "detail": [
            {
                "type": "extra_forbidden",
                "loc": ["body", "stream_options"],
                "msg": "Extra inputs are not permitted",
                "input": {"include_usage": True},
            }
        ]
    }
).encode()


@pytest.mark.parametrize("status", [400, 422])
async def test_an_upstream_refusing_stream_options_is_asked_again_without_and_remembered(
    make_upstream: MakeUpstream, seamline: StartSeamline, status: int
) -> None:
    a = await make_upstream()
    fail(a, status, PYDANTIC_422)
    a.script(*sse_stream("fine"))
    base = await seamline(conf(account("A", a.url)))
    assert await ask(base, True) == "fine"
    sent = [json.loads(r["body"]) for r in a.requests]
    assert [("stream_options" in s) for s in sent] == [True, False]
    assert sent[0]["messages"] == sent[1]["messages"]
    # Remembered for the account: the next request goes without the option at once.
    assert await ask(base, True) == "fine"
    assert len(a.requests) == 3
    assert "stream_options" not in json.loads(a.requests[2]["body"])
    assert (await accounts(base))["A"]["errors"] == 0


async def test_a_refused_option_the_client_asked_for_itself_is_the_clients_error(
    make_upstream: MakeUpstream, seamline: StartSeamline
) -> None:
    a = await make_upstream()
    fail(a, 422, PYDANTIC_422)
    base = await seamline(conf(account("A", a.url)))
    body = request_body(True, stream_options={"include_usage": True})
    reply = await post(base, body)
    assert reply.status == 422
    assert len(a.requests) == 1  # taking the client's own option away would change the answer


# A 200 stream that fails before any event reached the client: nothing was sent, so it is
# the account's failure like an error status, and the next account answers.
EARLY_FAILURES = {
    "error_event_429": ([b'data: {"error":{"code":429,"message":"rate limited"}}\n\n'], "end"),
    "error_event_500": ([b'data: {"error":{"code":"500","message":"overloaded"}}\n\n'], "end"),
    "event_error_block": ([b'event: error\ndata: {"message":"provider down"}\n\n'], "end"),
    "bare_error_line": ([b'{"error":{"message":"upstream overloaded","code":503}}\n'], "end"),
    "reset_before_any_event": ([], "reset"),
    # Named by words, not a number: OpenAI's and Anthropic's rate-limit vocabulary.
    "error_event_rate_limit_words": (
        [b'data: {"error":{"type":"requests","code":"rate_limit_exceeded","message":"slow"}}\n\n'],
        "end",
    ),
    "event_error_overloaded": (
        [b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
         b'"message":"Overloaded"}}\n\n'],
        "end",
    ),
}  # fmt: skip


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
@pytest.mark.parametrize("failure", list(EARLY_FAILURES))
async def test_a_stream_failing_before_its_first_event_fails_over(
    make_upstream: MakeUpstream, seamline: StartSeamline, failure: str, stream: bool
) -> None:
    a, b = await make_upstream(), await make_upstream()
    pieces, ending = EARLY_FAILURES[failure]
    a.script(*pieces, ending=ending)
    ok(b, "from B", True)  # B streams; a JSON client gets it aggregated
    base = await seamline(conf(account("A", a.url), account("B", b.url), routing=FILL_FIRST))
    assert await ask(base, stream) == "from B"
    assert counts(a, b) == [1, 1]
    assert a.requests[0]["body"] == b.requests[0]["body"]
    row = (await accounts(base))["A"]
    if failure in ("error_event_429", "error_event_rate_limit_words"):
        assert row["state"] == "rate_limited"
    else:
        assert row["errors"] == 1


@pytest.mark.parametrize(
    ("error", "status", "exc"),
    [
        (b'{"type":"invalid_request_error","message":"too long"}', 400, openai.BadRequestError),
        (b'{"type":"authentication_error","message":"who"}', 401, openai.AuthenticationError),
        (b'{"code":"InvalidParameter","message":"bad"}', 400, openai.BadRequestError),
    ],
)
async def test_a_client_fault_in_the_first_event_is_the_clients_error_not_a_502(
    make_upstream: MakeUpstream,
    seamline: StartSeamline,
    error: bytes,
    status: int,
    exc: type[openai.APIStatusError],
) -> None:
    a, b = await make_upstream(), await make_upstream()
    a.script(b'data: {"error":' + error + b"}\n\n")
    ok(b, "from B", True)
    base = await seamline(conf(account("A", a.url), account("B", b.url), routing=FILL_FIRST))
    if status == 401:  # the account's key was refused: another account answers
        assert await ask(base, True) == "from B"
        return
    with pytest.raises(exc) as info:
        await ask(base, True)  # openai-python raises it as what it is, and retries nothing
    assert info.value.status_code == status
    assert counts(a, b) == [1, 0]
    assert (await accounts(base))["A"]["errors"] == 0


async def test_an_account_that_failed_before_is_not_asked_again_after_an_early_failure(
    make_upstream: MakeUpstream, seamline: StartSeamline
) -> None:
    a, b, c = await make_upstream(), await make_upstream(), await make_upstream()
    fail(a, 503)
    b.script(b'data: {"error":{"code":500,"message":"overloaded"}}\n\n')
    ok(c, "from C", True)
    base = await seamline(
        conf(account("A", a.url), account("B", b.url), account("C", c.url), routing=FILL_FIRST)
    )
    assert await ask(base, True) == "from C"
    assert counts(a, b, c) == [1, 1, 1]


NOT_A_COMPLETION = {
    "empty": (b"", "application/json"),
    "html": (b"<html><body>502 Bad Gateway</body></html>", "text/html"),
    "json_list": (b"[]", "application/json"),
    "object_without_choices": (b'{"id":"x","object":"chat.completion"}', "application/json"),
}


@pytest.mark.parametrize(
    ("answer", "stream"),
    # A JSON client gets any JSON object as it is: only a stream cannot be made of one
    # without choices.
    [(a, s) for a in NOT_A_COMPLETION for s in (True, False) if a != "object_without_choices" or s],
)
async def test_a_200_without_a_completion_is_a_502_and_fails_over(
    make_upstream: MakeUpstream, seamline: StartSeamline, answer: str, stream: bool
) -> None:
    body, content_type = NOT_A_COMPLETION[answer]
    a, b = await make_upstream(), await make_upstream()
    a.script(*([body] if body else []), content_type=content_type)
    ok(b, "from B", stream)
    base = await seamline(conf(account("A", a.url), account("B", b.url), routing=FILL_FIRST))
    assert await ask(base, stream) == "from B"
    assert counts(a, b) == [1, 1]
    # With no other account, the client gets the 502, not an empty answer.
    only = await seamline(conf(account("A", a.url)))
    reply = await post(only, request_body(stream))
    assert reply.status == 502
    error = reply.json()["error"]
    assert error["code"] == "upstream_bad_response"
    assert "no completion" in error["message"]


async def test_an_error_event_naming_a_client_error_is_not_failed_over(
    make_upstream: MakeUpstream, seamline: StartSeamline
) -> None:
    a, b = await make_upstream(), await make_upstream()
    a.script(b'data: {"error":{"code":400,"message":"bad tool schema"}}\n\n')
    ok(b, "from B", True)
    base = await seamline(conf(account("A", a.url), account("B", b.url), routing=FILL_FIRST))
    reply = await post(base, request_body(stream=True))
    assert reply.status == 400
    assert reply.json()["error"]["message"] == "bad tool schema"
    assert b.requests == []


async def test_the_last_account_failing_early_gives_its_own_error(
    make_upstream: MakeUpstream, seamline: StartSeamline
) -> None:
    a = await make_upstream()
    a.script(b'data: {"error":{"code":503,"message":"overloaded, try later"}}\n\n')
    base = await seamline(conf(account("A", a.url)))
    reply = await post(base, request_body(stream=True))
    assert reply.status == 503
    assert reply.json()["error"]["message"] == "overloaded, try later"
    assert len(a.requests) == 1


# -- 2. no retry once a byte went out -----------------------------------------------------


async def test_no_failover_after_the_first_byte(
    make_upstream: MakeUpstream, seamline: StartSeamline
) -> None:
    a, b = await make_upstream(), await make_upstream()
    a.script(event(chunk("partial")), ending="reset")
    ok(b, "from B", True)
    base = await seamline(conf(account("A", a.url), account("B", b.url), routing=FILL_FIRST))
    got: list[str] = []
    async with client(base) as c:
        stream = await c.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        with pytest.raises(openai.APIError):
            async for ch in stream:
                got.append(ch.choices[0].delta.content or "")
    assert got == ["partial"]
    assert b.requests == []
    rows = await accounts(base)
    assert rows["A"]["errors"] == 1
    assert rows["A"]["last_error"]


@pytest.mark.parametrize("answer", ["json", "aggregated_stream"])
async def test_broken_non_streamed_answer_counts_against_the_account(
    make_upstream: MakeUpstream, seamline: StartSeamline, answer: str
) -> None:
    a = await make_upstream()
    if answer == "json":
        a.script(completion("from A")[:30], content_type="application/json", ending="reset")
    else:
        a.script(event(chunk("from ")), ending="reset")
    base = await seamline(conf(account("A", a.url), routing="breaker_threshold = 1"))
    reply = await post(base)
    assert reply.status == 502
    row = (await accounts(base))["A"]
    assert (row["errors"], row["state"]) == (1, "circuit_open")


# -- 3. account health --------------------------------------------------------------------


async def test_429_with_retry_after_cools_the_account_down(
    make_upstream: MakeUpstream, seamline: StartSeamline
) -> None:
    a, b = await make_upstream(), await make_upstream()
    fail(a, 429, headers={"Retry-After": "30"})
    ok(b, "from B", False)
    base = await seamline(conf(account("A", a.url), account("B", b.url)))
    for _ in range(4):  # round robin would send every other one to A
        assert await ask(base) == "from B"
    assert counts(a, b) == [1, 4]
    rows = await accounts(base)
    assert rows["A"]["state"] == "rate_limited"
    assert 25 < seconds_until(rows["A"]["cooling_down_until"]) <= 31
    assert rows["B"]["state"] == "available"


QUOTA_ANSWERS = {
    "openai": (
        429,
        {"error": {"message": "You exceeded your current quota", "code": "insufficient_quota"}},
    ),
    "dashscope_throttling": (
        429,
        {
            "request_id": "5e1d",
            "code": "Throttling.AllocationQuota",
            "message": "Allocated quota exceeded, please increase your quota limit.",
        },
    ),
    "dashscope_compatible": (
        429,
        {
            "error": {
                "code": "Throttling.AllocationQuota",
                "message": "Allocated quota exceeded",
                "type": "Throttling.AllocationQuota",
            }
        },
    ),
    "dashscope_free_tier": (
        403,
        {"code": "AllocationQuota.FreeTierOnly", "message": "The free tier quota is exhausted."},
    ),
}


@pytest.mark.parametrize("answer", sorted(QUOTA_ANSWERS))
async def test_quota_answer_takes_the_account_out_until_the_reset(
    make_upstream: MakeUpstream, seamline: StartSeamline, answer: str
) -> None:
    a, b = await make_upstream(), await make_upstream()
    status, body = QUOTA_ANSWERS[answer]
    fail(a, status, json.dumps(body).encode())
    ok(b, "from B", True)
    base = await seamline(conf(account("A", a.url), account("B", b.url), routing=FILL_FIRST))
    for _ in range(3):
        assert await ask(base, stream=True) == "from B"
    assert counts(a, b) == [1, 3]
    row = (await accounts(base))["A"]
    assert row["state"] == "quota_exhausted"
    until_ts = datetime.fromisoformat(row["quota_exhausted_until"]).timestamp()
    assert abs(until_ts - next_utc_midnight()) < 2  # quota_reset defaults to 00:00 UTC


async def test_401_disables_an_api_key_account_and_logs_it_once(
    make_upstream: MakeUpstream, seamline: StartSeamline, log_output: io.StringIO
) -> None:
    a, b = await make_upstream(), await make_upstream()
    fail(a, 401, delay_headers=0.2)  # both requests reach A before its answer
    ok(b, "from B", False)
    base = await seamline(conf(account("A", a.url), account("B", b.url), routing=FILL_FIRST))
    assert list(await asyncio.gather(ask(base), ask(base))) == ["from B", "from B"]
    assert await ask(base) == "from B"
    assert counts(a, b) == [2, 3]
    disabled = [ln for ln in log_lines(log_output) if ln["event"] == "account_disabled"]
    assert len(disabled) == 1
    assert disabled[0]["level"] == "error"
    assert disabled[0]["account"] == "A"
    assert key_of("A") not in log_output.getvalue()
    row = (await accounts(base))["A"]
    assert row["state"] == "disabled"
    assert "401" in row["disabled"]


async def test_5xx_open_the_breaker_then_one_probe_goes_to_the_account(
    make_upstream: MakeUpstream, seamline: StartSeamline
) -> None:
    a, b = await make_upstream(), await make_upstream()
    fail(a, 500)
    fail(a, 502)
    ok(a, "from A", False, delay_headers=0.2)  # the probe: slow enough to overlap another
    ok(a, "from A", False)
    ok(b, "from B", False)
    base = await seamline(
        conf(
            account("A", a.url),
            account("B", b.url),
            routing=f"{FILL_FIRST}\nbreaker_threshold = 2\nbreaker_cooldown = 0.5",
        )
    )
    for _ in range(3):
        assert await ask(base) == "from B"
    assert counts(a, b) == [2, 3]  # after two failures A is skipped
    row = (await accounts(base))["A"]
    assert row["state"] == "circuit_open"
    assert row["circuit_open_until"] is not None
    await asyncio.sleep(0.55)
    # Half-open: one probe goes to A; the request that overlaps it goes to B.
    probe = asyncio.create_task(ask(base))
    await until(lambda: len(a.requests) == 3)
    assert await ask(base) == "from B"
    assert await probe == "from A"
    # The probe succeeded: A is back.
    assert await ask(base) == "from A"
    assert counts(a, b) == [4, 4]
    assert (await accounts(base))["A"]["state"] == "available"


async def test_failed_probe_reopens_the_breaker(
    make_upstream: MakeUpstream, seamline: StartSeamline
) -> None:
    a, b = await make_upstream(), await make_upstream()
    fail(a, 500)
    ok(b, "from B", False)
    base = await seamline(
        conf(
            account("A", a.url),
            account("B", b.url),
            routing=f"{FILL_FIRST}\nbreaker_threshold = 1\nbreaker_cooldown = 0.4",
        )
    )
    assert await ask(base) == "from B"
    await asyncio.sleep(0.45)
    assert await ask(base) == "from B"  # the probe failed over to B
    assert await ask(base) == "from B"  # and the circuit is open again
    assert counts(a, b) == [2, 3]
    assert (await accounts(base))["A"]["state"] == "circuit_open"


async def test_probe_answered_with_a_client_error_does_not_leave_the_account_half_open(
    make_upstream: MakeUpstream, seamline: StartSeamline
) -> None:
    a, b = await make_upstream(), await make_upstream()
    fail(a, 500)
    fail(a, 400, error_body("bad request"))
    ok(a, "from A", False)
    ok(b, "from B", False)
    base = await seamline(
        conf(
            account("A", a.url),
            account("B", b.url),
            routing=f"{FILL_FIRST}\nbreaker_threshold = 1\nbreaker_cooldown = 0.3",
        )
    )
    assert await ask(base) == "from B"
    await asyncio.sleep(0.35)
    with pytest.raises(openai.BadRequestError):
        await ask(base)  # the probe: A answers, and the answer is the client's fault
    assert await ask(base) == "from A"
    assert counts(a, b) == [3, 1]


async def test_probe_abandoned_by_its_client_does_not_leave_the_account_half_open(
    make_upstream: MakeUpstream, seamline: StartSeamline
) -> None:
    a, b = await make_upstream(), await make_upstream()
    fail(a, 500)
    ok(a, "from A", False, delay_headers=0.5)
    ok(a, "from A", False)
    ok(b, "from B", False)
    base = await seamline(
        conf(
            account("A", a.url),
            account("B", b.url),
            routing=f"{FILL_FIRST}\nbreaker_threshold = 1\nbreaker_cooldown = 0.3",
        )
    )
    assert await ask(base) == "from B"
    await asyncio.sleep(0.35)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.1)) as s:
        with pytest.raises(TimeoutError):
            await post(base, None, s)
    await until(lambda: len(a.requests) == 2)
    await until_released(base, "A")
    assert await ask(base) == "from A"
    assert counts(a, b) == [3, 1]


# -- 4. when no account can take the request ----------------------------------------------


async def test_all_rate_limited_gives_429_with_the_soonest_retry_after(
    make_upstream: MakeUpstream, seamline: StartSeamline
) -> None:
    a, b = await make_upstream(), await make_upstream()
    fail(a, 429, headers={"Retry-After": "9"})
    fail(b, 429, error_body(f"slow down {key_of('B')}"), headers={"Retry-After": "4"})
    base = await seamline(conf(account("A", a.url), account("B", b.url)))
    for _ in range(2):  # the second is answered without asking anyone
        reply = await post(base)
        assert reply.status == 429
        assert reply.headers["Retry-After"] == "4"
        err = reply.json()["error"]
        assert err["type"] == "rate_limit_error"
        assert err["message"]
        assert b"sk-test" not in reply.body
        assert b"secret" not in reply.body
    assert counts(a, b) == [1, 1]
    with pytest.raises(openai.RateLimitError):
        await ask(base)


async def test_all_disabled_gives_503(make_upstream: MakeUpstream, seamline: StartSeamline) -> None:
    a, b = await make_upstream(), await make_upstream()
    fail(a, 401)
    fail(b, 403)
    base = await seamline(conf(account("A", a.url), account("B", b.url)))
    for _ in range(2):
        reply = await post(base)
        assert reply.status == 503
        assert reply.json()["error"]["code"] == "no_account_available"
        assert b"sk-test" not in reply.body
    assert counts(a, b) == [1, 1]


@pytest.mark.parametrize(("down", "status"), [("500", 500), ("refused", 502)])
async def test_all_down_every_request_is_still_tried_once_the_circuits_open(
    make_upstream: MakeUpstream, seamline: StartSeamline, down: str, status: int
) -> None:
    a, b = await make_upstream(), await make_upstream()
    urls = [closed_port_url(), closed_port_url()] if down == "refused" else [a.url, b.url]
    fail(a, 500)
    fail(b, 500)
    base = await seamline(
        conf(
            account("A", urls[0]),
            account("B", urls[1]),
            routing="breaker_threshold = 1\nbreaker_cooldown = 5",
        )
    )
    for _ in range(3):
        # Open circuits are seamline's guess, not the upstream's word: each request still
        # goes out, and the client gets the last failure, still OpenAI-shaped.
        reply = await post(base)
        assert reply.status == status
        assert reply.json()["error"]["message"]
        assert b"sk-test" not in reply.body
    assert counts(a, b) == ([3, 3] if down == "500" else [0, 0])
    rows = await accounts(base)
    assert {rows["A"]["state"], rows["B"]["state"]} == {"circuit_open"}
    ready = await fetch_ready(base)
    assert ready == 200  # a load balancer must not take the replica out for a guess


async def test_model_no_account_serves_gives_404(
    make_upstream: MakeUpstream, seamline: StartSeamline
) -> None:
    a, b = await make_upstream(), await make_upstream()
    ok(a, "from A", False)
    ok(b, "from B", False)
    base = await seamline(
        conf(account("A", a.url, models=["qwen-*"]), account("B", b.url, models=["qwen-*"]))
    )
    with pytest.raises(openai.NotFoundError) as info:
        await ask(base, model="gpt-4o")
    assert "gpt-4o" in str(info.value)
    assert counts(a, b) == [0, 0]
    assert await ask(base, model="qwen-max") == "from A"


async def test_models_route_to_the_accounts_that_serve_them(
    make_upstream: MakeUpstream, seamline: StartSeamline
) -> None:
    a, b = await make_upstream(), await make_upstream()
    ok(a, "from A", False)
    ok(b, "from B", False)
    base = await seamline(
        conf(account("A", a.url, models=["qwen-*"]), account("B", b.url, models=["deepseek-*"]))
    )
    for _ in range(3):
        assert await ask(base, model="deepseek-chat") == "from B"
        assert await ask(base, model="qwen-max") == "from A"
    assert counts(a, b) == [3, 3]


# -- 5. local limits ----------------------------------------------------------------------


async def test_max_concurrent_sends_the_overflow_to_the_next_account(
    make_upstream: MakeUpstream, seamline: StartSeamline
) -> None:
    a, b = await make_upstream(), await make_upstream()
    a.script(*sse_stream("one ", "two ", "three"), pause=0.1)
    ok(a, "from A", False)
    ok(b, "from B", False)
    base = await seamline(
        conf(account("A", a.url, max_concurrent=1), account("B", b.url), routing=FILL_FIRST)
    )
    slow = asyncio.create_task(ask(base, stream=True))
    await until(lambda: len(a.requests) == 1)
    assert await ask(base) == "from B"
    assert await slow == "one two three"
    assert await ask(base) == "from A"  # the slot is free again
    assert counts(a, b) == [2, 1]


async def test_a_client_going_away_mid_stream_frees_its_slot(
    make_upstream: MakeUpstream, seamline: StartSeamline
) -> None:
    a, b = await make_upstream(), await make_upstream()
    a.script(event(chunk("thinking")), ending="hang")
    ok(a, "from A", False)
    ok(b, "from B", False)
    base = await seamline(
        conf(account("A", a.url, max_concurrent=1), account("B", b.url), routing=FILL_FIRST)
    )
    async with aiohttp.ClientSession() as s:
        resp = await s.post(base + "/chat/completions", data=request_body(stream=True))
        assert await resp.content.readuntil(b"\n\n") == event(chunk("thinking"))
        assert await ask(base) == "from B"  # A's one slot is taken
        resp.close()
    await until_released(base, "A")
    assert await ask(base) == "from A"
    row = (await accounts(base))["A"]
    assert (row["errors"], row["state"]) == (0, "available")  # the client left, not A


async def test_rpm_sends_the_third_request_in_a_minute_elsewhere(
    make_upstream: MakeUpstream, seamline: StartSeamline
) -> None:
    a, b = await make_upstream(), await make_upstream()
    ok(a, "from A", False)
    ok(b, "from B", False)
    base = await seamline(conf(account("A", a.url, rpm=2), account("B", b.url), routing=FILL_FIRST))
    assert [await ask(base) for _ in range(4)] == ["from A", "from A", "from B", "from B"]
    row = (await accounts(base))["A"]
    assert row["state"] == "rpm_limit"


async def test_daily_requests_limit(make_upstream: MakeUpstream, seamline: StartSeamline) -> None:
    a, b = await make_upstream(), await make_upstream()
    ok(a, "from A", False)
    ok(b, "from B", False)
    base = await seamline(
        conf(
            account("A", a.url, daily_requests=2),
            account("B", b.url, daily_requests=1),
            routing=FILL_FIRST,
        )
    )
    assert [await ask(base) for _ in range(3)] == ["from A", "from A", "from B"]
    rows = await accounts(base)
    assert (rows["A"]["state"], rows["A"]["requests_today"]) == ("daily_limit", 2)
    assert (rows["B"]["state"], rows["B"]["requests_today"]) == ("daily_limit", 1)
    # Both are used up: waiting helps, so it is a 429 saying until the next reset.
    reply = await post(base)
    assert reply.status == 429
    retry = int(reply.headers["Retry-After"])
    assert abs(retry - (next_utc_midnight() - time.time())) < 3
    assert counts(a, b) == [2, 1]


# -- 6. routing strategies ----------------------------------------------------------------


async def three(make_upstream: MakeUpstream) -> list[Upstream]:
    ups = [await make_upstream() for _ in range(3)]
    for name, up in zip("ABC", ups, strict=True):
        ok(up, f"from {name}", False)
    return ups


async def test_round_robin_gives_each_of_three_accounts_exactly_its_share(
    make_upstream: MakeUpstream, seamline: StartSeamline
) -> None:
    ups = await three(make_upstream)
    base = await seamline(conf(*(account(n, u.url) for n, u in zip("ABC", ups, strict=True))))
    replies = await post_many(base, 300)
    assert {r.status for r in replies} == {200}
    assert counts(*ups) == [100, 100, 100]
    rows = await accounts(base)
    assert [rows[n]["requests"] for n in "ABC"] == [100, 100, 100]
    assert [rows[n]["in_flight"] for n in "ABC"] == [0, 0, 0]


async def test_fill_first_uses_the_first_account_while_it_can(
    make_upstream: MakeUpstream, seamline: StartSeamline
) -> None:
    ups = await three(make_upstream)
    accs = (account(n, u.url) for n, u in zip("ABC", ups, strict=True))
    base = await seamline(conf(*accs, routing=FILL_FIRST))
    await post_many(base, 30)
    assert counts(*ups) == [30, 0, 0]


async def test_weighted_follows_the_weights_exactly(
    make_upstream: MakeUpstream, seamline: StartSeamline
) -> None:
    ups = await three(make_upstream)
    accs = (account(n, u.url, weight=w) for n, u, w in zip("ABC", ups, (3, 2, 1), strict=True))
    base = await seamline(conf(*accs, routing='strategy = "weighted"'))
    await post_many(base, 120)
    assert counts(*ups) == [60, 40, 20]


async def test_a_lower_priority_tier_is_used_only_when_the_first_tier_cannot(
    make_upstream: MakeUpstream, seamline: StartSeamline
) -> None:
    a, b, c = await three(make_upstream)
    base = await seamline(
        conf(
            account("A", a.url, priority=1),
            account("B", b.url),
            account("C", c.url),
        )
    )
    await post_many(base, 40)
    assert counts(a, b, c) == [0, 20, 20]
    for up in (b, c):
        up.scripts.clear()
        fail(up, 429, headers={"Retry-After": "30"})
    assert [await ask(base) for _ in range(3)] == ["from A"] * 3
    assert counts(a, b, c) == [3, 21, 21]


# -- 7. usage accounting ------------------------------------------------------------------


def usage_event() -> bytes:
    return event(usage_chunk(11, 7))


def stream_with_usage() -> list[bytes]:
    *answer, done = sse_stream("Hel", "lo")
    return [*answer, usage_event(), done]


async def test_stream_usage_is_asked_for_counted_and_hidden_from_a_client_that_did_not_ask(
    make_upstream: MakeUpstream, seamline: StartSeamline
) -> None:
    a, b = await make_upstream(), await make_upstream()
    a.script(*stream_with_usage())
    b.script(*stream_with_usage())
    base = await seamline(conf(account("A", a.url), account("B", b.url)))
    sent = request_body(stream=True)
    reply = await post(base, sent)
    assert reply.status == 200
    assert reply.body == b"".join(p for p in stream_with_usage() if p != usage_event())
    upstream_got = json.loads(a.requests[0]["body"])
    assert upstream_got.pop("stream_options") == {"include_usage": True}
    assert upstream_got == json.loads(sent)
    # Through the SDK (to B): every chunk is a normal one, none is a usage chunk.
    async with client(base) as c:
        s = await c.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        chunks = [ch async for ch in s]
    assert text_of(chunks) == "Hello"
    assert all(ch.choices and ch.usage is None for ch in chunks)
    rows = await accounts(base)
    for name in "AB":
        assert rows[name]["prompt_tokens"] == 11
        assert rows[name]["completion_tokens"] == 7
        assert rows[name]["tokens_today"] == 18
        assert rows[name]["requests_today"] == 1


async def test_stream_usage_reaches_a_client_that_asked_for_it_byte_for_byte(
    make_upstream: MakeUpstream, seamline: StartSeamline
) -> None:
    a = await make_upstream()
    a.script(*stream_with_usage())
    base = await seamline(conf(account("A", a.url)))
    sent = request_body(stream=True, stream_options={"include_usage": True})
    reply = await post(base, sent)
    assert reply.body == b"".join(stream_with_usage())
    assert a.requests[0]["body"] == sent
    async with client(base) as c:
        s = await c.chat.completions.create(
            model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        chunks = [ch async for ch in s]
    usage = chunks[-1].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (11, 7)
    row = (await accounts(base))["A"]
    assert (row["prompt_tokens"], row["completion_tokens"], row["requests_today"]) == (22, 14, 2)


async def test_non_streamed_usage_is_counted_per_account(
    make_upstream: MakeUpstream, seamline: StartSeamline
) -> None:
    a, b = await make_upstream(), await make_upstream()
    a.script(completion("from A", 5, 3), content_type="application/json")
    b.script(completion("from B", 100, 40), content_type="application/json")
    base = await seamline(conf(account("A", a.url), account("B", b.url)))
    assert [await ask(base) for _ in range(4)] == ["from A", "from B"] * 2
    rows = await accounts(base)
    assert (rows["A"]["prompt_tokens"], rows["A"]["completion_tokens"]) == (10, 6)
    assert (rows["B"]["prompt_tokens"], rows["B"]["completion_tokens"]) == (200, 80)
    assert (rows["A"]["tokens_today"], rows["B"]["tokens_today"]) == (16, 280)
    assert (rows["A"]["requests_today"], rows["B"]["requests_today"]) == (2, 2)


# -- 8. persisted state -------------------------------------------------------------------


def state_files(directory: Path) -> bytes:
    """The state database and its journal, if any."""
    return b"".join(p.read_bytes() for p in sorted(directory.glob("state.db*")))


async def test_exhausted_quota_survives_a_restart(
    make_upstream: MakeUpstream, tmp_path: Path
) -> None:
    a, b = await make_upstream(), await make_upstream()
    status, body = QUOTA_ANSWERS["openai"]
    fail(a, status, json.dumps(body).encode())
    ok(b, "from B", False)
    text = conf(
        account("A", a.url),
        account("B", b.url),
        routing=FILL_FIRST,
        state=str(tmp_path / "state.db"),
    )
    runner, base = await start_seamline(text)
    try:
        assert await ask(base) == "from B"
    finally:
        await runner.cleanup()
    assert counts(a, b) == [1, 1]
    runner, base = await start_seamline(text)
    try:
        assert await ask(base) == "from B"
        row = (await accounts(base))["A"]
    finally:
        await runner.cleanup()
    assert counts(a, b) == [1, 2]  # the first request after the restart went straight to B
    assert row["state"] == "quota_exhausted"
    assert (row["requests"], row["errors"]) == (1, 1)


class HeldStore(MemoryStore):
    """Saves only once let through, like a disk that is slow to answer."""

    def __init__(self) -> None:
        super().__init__()
        self.saving = asyncio.Event()
        self.gate = asyncio.Event()

    async def save(self, states: dict[str, dict[str, Any]]) -> None:
        self.saving.set()
        await self.gate.wait()
        await super().save(states)


async def test_a_save_cut_short_by_shutdown_is_made_by_the_last_flush() -> None:
    pool = Pool([Limits("A"), Limits("B")])
    store = HeldStore()
    persister = Persister(pool, store, interval=0.001)
    persister.start()
    pool.quota_exhausted(pool.states["A"], time.time(), None)
    await store.saving.wait()  # the periodic save is under way when shutdown begins
    stopping = asyncio.create_task(persister.stop())
    for _ in range(3):
        await asyncio.sleep(0)
    store.gate.set()
    await stopping
    assert store.states["A"]["quota_until"] == pool.states["A"].quota_until > 0


# -- 9. OAuth accounts --------------------------------------------------------------------

OLD_ACCESS = "at-old-77aa-tok3nsecret"
OLD_REFRESH = "rt-old-77aa-tok3nsecret"


@dataclass
class TokenServer:
    """The OAuth token endpoint in miniature: counts refreshes, issues new tokens."""

    url: str = ""
    posts: list[dict[str, str]] = field(default_factory=list)
    answers: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)
    delay: float = 0.0

    async def token(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.posts.append(form)
        await asyncio.sleep(self.delay)
        if self.answers:
            status, body = self.answers.pop(0)
            return web.json_response(body, status=status)
        n = len(self.issued) + 1
        self.issued.append(f"at-new-{n}-tok3nsecret")
        body = {
            "access_token": self.issued[-1],
            "refresh_token": f"rt-new-{n}-tok3nsecret",
            "token_type": "Bearer",
            "expires_in": 3600,
        }
        return web.json_response(body)


@pytest.fixture
async def token_server(aiohttp_server: AiohttpServer) -> TokenServer:
    ts = TokenServer()
    app = web.Application()
    app.router.add_post("/oauth2/token", ts.token)
    server = await aiohttp_server(app)
    ts.url = str(server.make_url("/oauth2/token"))
    return ts


def write_creds(
    path: Path,
    upstream_url: str,
    expires_in: float,
    access: str = OLD_ACCESS,
    refresh: str = OLD_REFRESH,
) -> None:
    """What `qwen` writes on login (atomically: a new file, so seamline sees a new login)."""
    data = {
        "access_token": access,
        "refresh_token": refresh,
        "token_type": "Bearer",
        "resource_url": upstream_url.removesuffix("/v1"),
        "expiry_date": int((time.time() + expires_in) * 1000),
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


INVALID_GRANT = (400, {"error": "invalid_grant", "error_description": "refresh token expired"})


async def test_fifty_concurrent_requests_share_one_refresh(
    make_upstream: MakeUpstream,
    seamline: StartSeamline,
    token_server: TokenServer,
    tmp_path: Path,
) -> None:
    q = await make_upstream()
    ok(q, "from Q", False)
    creds = tmp_path / "creds.json"
    write_creds(creds, q.url, expires_in=-60)
    token_server.delay = 0.2  # every request arrives while the refresh is in flight
    base = await seamline(conf(oauth_account("Q", creds, token_server.url)))
    replies = await post_many(base, 50, concurrency=50)
    assert {r.status for r in replies} == {200}
    assert len(token_server.posts) == 1
    assert token_server.posts[0]["refresh_token"] == OLD_REFRESH
    assert token_server.posts[0]["grant_type"] == "refresh_token"
    new = token_server.issued[0]
    assert len(q.requests) == 50
    assert {r["headers"]["Authorization"] for r in q.requests} == {f"Bearer {new}"}
    saved = json.loads(creds.read_text())
    assert (saved["access_token"], saved["refresh_token"]) == (new, "rt-new-1-tok3nsecret")


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
async def test_upstream_401_refreshes_and_retries_the_same_account(
    make_upstream: MakeUpstream,
    seamline: StartSeamline,
    token_server: TokenServer,
    tmp_path: Path,
    stream: bool,
) -> None:
    q, b = await make_upstream(), await make_upstream()
    fail(q, 401, error_body("invalid access token"))
    ok(q, "from Q", stream)
    ok(b, "from B", stream)
    creds = tmp_path / "creds.json"
    write_creds(creds, q.url, expires_in=3600)  # not expired, yet refused
    base = await seamline(
        conf(
            oauth_account("Q", creds, token_server.url),
            account("B", b.url),
            routing=FILL_FIRST,
        )
    )
    assert await ask(base, stream) == "from Q"
    assert len(token_server.posts) == 1
    new = token_server.issued[0]
    auths = [r["headers"]["Authorization"] for r in q.requests]
    assert auths == [f"Bearer {OLD_ACCESS}", f"Bearer {new}"]
    assert b.requests == []
    assert (await accounts(base))["Q"]["state"] == "available"


async def test_rejected_refresh_disables_the_account_and_fails_over(
    make_upstream: MakeUpstream,
    seamline: StartSeamline,
    token_server: TokenServer,
    tmp_path: Path,
) -> None:
    q, b = await make_upstream(), await make_upstream()
    ok(q, "from Q", True)
    ok(b, "from B", True)
    token_server.answers.append(INVALID_GRANT)
    creds = tmp_path / "creds.json"
    write_creds(creds, q.url, expires_in=-60)
    base = await seamline(
        conf(
            oauth_account("Q", creds, token_server.url),
            account("B", b.url),
            routing=FILL_FIRST,
        )
    )
    assert await ask(base, stream=True) == "from B"
    assert await ask(base, stream=True) == "from B"
    assert len(token_server.posts) == 1  # disabled: no second refresh attempt
    assert q.requests == []
    status, text = await admin_get(base, Authorization=f"Bearer {ADMIN_KEY}")
    assert status == 200
    row = next(r for r in json.loads(text)["accounts"] if r["name"] == "Q")
    assert row["state"] == "disabled"
    assert "refresh token rejected" in row["disabled"]
    assert "invalid_grant" in row["disabled"]
    assert "tok3nsecret" not in text


async def test_a_new_login_puts_a_revoked_oauth_account_back(
    make_upstream: MakeUpstream,
    seamline: StartSeamline,
    token_server: TokenServer,
    tmp_path: Path,
) -> None:
    q, b = await make_upstream(), await make_upstream()
    ok(q, "from Q", False)
    ok(b, "from B", False)
    token_server.answers.append(INVALID_GRANT)
    creds = tmp_path / "creds.json"
    write_creds(creds, q.url, expires_in=-60)
    base = await seamline(
        conf(
            oauth_account("Q", creds, token_server.url),
            account("B", b.url),
            routing=FILL_FIRST,
        )
    )
    assert await ask(base) == "from B"
    assert (await accounts(base))["Q"]["state"] == "disabled"
    # The user logs in again with `qwen`, as the disable reason tells them to.
    write_creds(creds, q.url, 3600, access="at-relogin-tok3nsecret", refresh="rt-relogin-x")
    assert await ask(base) == "from Q"
    assert q.requests[0]["headers"]["Authorization"] == "Bearer at-relogin-tok3nsecret"
    assert (await accounts(base))["Q"]["state"] == "available"
    assert len(token_server.posts) == 1


async def test_a_revoked_oauth_account_stays_out_after_a_restart_until_a_new_login(
    make_upstream: MakeUpstream, token_server: TokenServer, tmp_path: Path
) -> None:
    q, b = await make_upstream(), await make_upstream()
    ok(q, "from Q", False)
    ok(b, "from B", False)
    token_server.answers.append(INVALID_GRANT)
    creds = tmp_path / "creds.json"
    write_creds(creds, q.url, expires_in=-60)
    text = conf(
        oauth_account("Q", creds, token_server.url),
        account("B", b.url),
        routing=FILL_FIRST,
        state=str(tmp_path / "state.db"),
    )
    for _ in range(2):
        runner, base = await start_seamline(text)
        try:
            assert await ask(base) == "from B"
            assert (await accounts(base))["Q"]["state"] == "disabled"
        finally:
            await runner.cleanup()
    assert len(token_server.posts) == 1  # the refused login was not tried again
    # The user logs in again while seamline is down.
    write_creds(creds, q.url, 3600, access="at-relogin-tok3nsecret", refresh="rt-relogin-x")
    runner, base = await start_seamline(text)
    try:
        assert await ask(base) == "from Q"
        assert (await accounts(base))["Q"]["state"] == "available"
    finally:
        await runner.cleanup()
    assert [r["headers"]["Authorization"] for r in q.requests] == ["Bearer at-relogin-tok3nsecret"]
    assert b"tok3nsecret" not in state_files(tmp_path)


async def test_unreachable_token_endpoint_fails_over_without_disabling(
    make_upstream: MakeUpstream, seamline: StartSeamline, tmp_path: Path
) -> None:
    q, b = await make_upstream(), await make_upstream()
    ok(q, "from Q", False)
    ok(b, "from B", False)
    creds = tmp_path / "creds.json"
    write_creds(creds, q.url, expires_in=-60)
    token_url = closed_port_url().removesuffix("/v1") + "/oauth2/token"
    base = await seamline(
        conf(oauth_account("Q", creds, token_url), account("B", b.url), routing=FILL_FIRST)
    )
    assert await ask(base) == "from B"
    row = (await accounts(base))["Q"]
    assert (row["state"], row["disabled"], row["errors"]) == ("available", None, 1)
    assert "unreachable" in row["last_error"]
    assert q.requests == []


# -- 10. the admin view -------------------------------------------------------------------


async def test_admin_accounts_needs_the_admin_key_and_shows_no_secret(
    make_upstream: MakeUpstream,
    seamline: StartSeamline,
    token_server: TokenServer,
    tmp_path: Path,
) -> None:
    q, a = await make_upstream(), await make_upstream()
    ok(q, "from Q", False)
    fail(a, 401)  # an upstream echoing the key it got, in its error
    creds = tmp_path / "creds.json"
    write_creds(creds, q.url, expires_in=-60)
    base = await seamline(
        conf(
            account("A", a.url),
            oauth_account("Q", creds, token_server.url),
        )
    )
    assert await ask(base) == "from Q"  # A refused its key, Q refreshed its token
    assert await ask(base) == "from Q"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"x-api-key": key_of("A")}):
        status, text = await admin_get(base, **headers)
        assert status == 401
        assert json.loads(text)["error"]["code"] == "invalid_api_key"
    status, text = await admin_get(base, **{"x-api-key": ADMIN_KEY})
    assert status == 200
    rows = {r["name"]: r for r in json.loads(text)["accounts"]}
    assert rows["A"]["state"] == "disabled"
    assert rows["Q"]["requests"] == 2
    secrets = [key_of("A"), ADMIN_KEY, OLD_ACCESS, OLD_REFRESH, *token_server.issued]
    assert len(secrets) == 5
    for secret in [*secrets, "tok3nsecret", "sk-test"]:
        assert secret not in text
