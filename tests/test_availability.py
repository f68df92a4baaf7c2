"""Never refuse a request on a guess: only the upstream's word or an operator's limit does.

An open circuit or a backoff no Retry-After asked for is seamline's own inference. It
steers requests to healthy accounts when there are some; when every account serving a
model is blocked only so, the request still goes out, to the one that recovers soonest.
A failure that belongs to one request (a route the upstream does not serve, a prompt it
chokes on) does not make the account look down for the others.
"""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import openai
import pytest

from support.builders import FILL_FIRST, account, chunk, conf, event, redis_config, sse_stream
from support.clients import (
    accounts,
    ask,
    client,
    collect,
    fetch_ready,
    get_json,
    post,
    request_body,
    text_of,
)
from support.redis_replicas import RedisServer, Replica, two_replicas
from support.seamline import StartSeamline
from support.upstream import MakeUpstream, Upstream, counts, fail, ok
from support.waiting import wait_for

BREAK_FAST = "breaker_threshold = 2\nbreaker_cooldown = 30"

# What a broken upstream does to a request, scripted; each one is a failure of the account.
BREAKAGES = {
    "5xx": {"status": 500},
    "reset_mid_stream": {"ending": "reset"},
    "clean_early_end": {},  # ends cleanly before any finish_reason: truncated
    "idle_timeout": {"ending": "hang"},
}


def breakage(up: Upstream, kind: str) -> None:
    if kind == "5xx":
        fail(up, 500)
        return
    piece = event(chunk("partial"))
    up.script(piece, **BREAKAGES[kind])  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", sorted(BREAKAGES))
async def test_one_account_that_keeps_failing_still_gets_every_request(
    make_upstream: MakeUpstream, seamline: StartSeamline, kind: str
) -> None:
    a = await make_upstream()
    for _ in range(4):
        breakage(a, kind)
    ok(a, "back", True)
    timeouts = "idle = 0.3" if kind == "idle_timeout" else ""
    base = await seamline(conf(account("A", a.url), routing=BREAK_FAST, timeouts=timeouts))
    for _ in range(4):
        # Each failure is the upstream's own, as the client would see it without a proxy.
        with pytest.raises(openai.APIError):
            await ask(base, stream=True)
    assert (await accounts(base))["A"]["state"] == "circuit_open"
    assert await fetch_ready(base) == 200
    # The circuit is open, yet the one account recovered: its next request shows it.
    assert await ask(base, stream=True) == "back"
    assert counts(a) == [5]
    assert (await accounts(base))["A"]["state"] == "available"


async def test_failing_accounts_are_steered_around_while_a_healthy_one_is_left(
    make_upstream: MakeUpstream, seamline: StartSeamline
) -> None:
    a, b = await make_upstream(), await make_upstream()
    fail(a, 500)
    ok(b, "from B", False)
    base = await seamline(
        conf(account("A", a.url), account("B", b.url), routing=f"{FILL_FIRST}\n{BREAK_FAST}")
    )
    for _ in range(6):
        assert await ask(base) == "from B"
    assert counts(a, b) == [2, 6]  # after two failures A is skipped


async def test_when_every_account_is_open_the_soonest_to_recover_takes_the_request(
    make_upstream: MakeUpstream, seamline: StartSeamline
) -> None:
    a, b = await make_upstream(), await make_upstream()
    fail(a, 500)
    fail(a, 500)
    ok(a, "from A", False)
    fail(b, 500)
    fail(b, 500)
    ok(b, "from B", False)
    routing = 'strategy = "fill_first"\nbreaker_threshold = 1\nbreaker_cooldown = 30'
    base = await seamline(conf(account("A", a.url), account("B", b.url), routing=routing))
    # A opens first, then B: both circuits are open, A's ends sooner.
    assert (await post(base)).status == 500
    assert counts(a, b) == [1, 1]
    rows = await accounts(base)
    assert rows["A"]["state"] == rows["B"]["state"] == "circuit_open"
    assert rows["A"]["circuit_open_until"] <= rows["B"]["circuit_open_until"]
    reply = await post(base)
    assert reply.status == 500  # A (soonest) first, then B: both still down
    assert counts(a, b) == [2, 2]
    assert await ask(base) == "from A"
    assert counts(a, b) == [3, 2]


async def test_a_route_the_upstream_does_not_serve_leaves_its_other_routes_alone(
    make_upstream: MakeUpstream, seamline: StartSeamline
) -> None:
    a, b = await make_upstream(), await make_upstream()
    fail(a, 500)  # A answers 500 to whatever it is asked, until told otherwise
    fail(b, 500)
    base = await seamline(conf(account("A", a.url), account("B", b.url), routing=BREAK_FAST))
    async with aiohttp.ClientSession() as s:
        for i in range(4):
            async with s.post(base + "/embeddings", json={"model": "m", "input": f"{i}"}) as r:
                assert r.status == 500
    rows = await accounts(base)
    assert rows["A"]["circuits_open"].keys() == {"embeddings"}
    a.scripts.clear()
    b.scripts.clear()
    ok(a, "from A", False)
    ok(b, "from B", False)
    # Chat requests still go round robin over both: A is not down for them.
    answers = [await ask(base) for _ in range(4)]
    assert sorted(answers) == ["from A", "from A", "from B", "from B"]


async def test_one_prompt_the_upstream_chokes_on_does_not_open_its_circuit(
    make_upstream: MakeUpstream, seamline: StartSeamline
) -> None:
    a, b = await make_upstream(), await make_upstream()
    for _ in range(5):
        fail(a, 500)
    ok(a, "from A", False)
    ok(b, "from B", False)
    base = await seamline(
        conf(account("A", a.url), account("B", b.url), routing=f"{FILL_FIRST}\n{BREAK_FAST}")
    )
    poison = request_body()
    for _ in range(5):  # a client retrying the same prompt: one request, failing again
        reply = await post(base, poison)
        assert reply.status == 200
    assert counts(a, b) == [5, 5]
    assert (await accounts(base))["A"]["state"] == "available"
    assert await ask(base) == "from A"  # an unrelated request still goes to A first


async def test_a_429_without_retry_after_on_the_only_account_refuses_nothing(
    make_upstream: MakeUpstream, seamline: StartSeamline
) -> None:
    a = await make_upstream()
    fail(a, 429)
    ok(a, "from A", False)
    base = await seamline(conf(account("A", a.url)))
    with pytest.raises(openai.RateLimitError):
        await ask(base)
    assert (await accounts(base))["A"]["state"] == "rate_limited"
    assert await fetch_ready(base) == 200
    assert await ask(base) == "from A"  # the backoff was a guess: the request went
    assert counts(a) == [2]


async def test_a_429_with_retry_after_is_the_upstreams_word_and_is_kept(
    make_upstream: MakeUpstream, seamline: StartSeamline
) -> None:
    a = await make_upstream()
    fail(a, 429, headers={"Retry-After": "30"})
    ok(a, "from A", False)
    base = await seamline(conf(account("A", a.url)))
    for _ in range(2):
        with pytest.raises(openai.RateLimitError):
            await ask(base)
    assert counts(a) == [1]  # the second was answered without asking
    assert await fetch_ready(base) == 503


async def test_an_operators_limit_still_refuses_without_trying(
    make_upstream: MakeUpstream, seamline: StartSeamline
) -> None:
    a = await make_upstream()
    fail(a, 500)
    ok(a, "from A", False)
    base = await seamline(conf(account("A", a.url, rpm=1)))
    assert (await post(base)).status == 500
    with pytest.raises(openai.RateLimitError):
        await ask(base)
    assert counts(a) == [1]


# -- the same rule across replicas --------------------------------------------------------


async def test_a_circuit_opened_through_one_replica_refuses_nothing_on_another(
    upstream: Upstream, redis_server: RedisServer, replicas: list[Replica], tmp_path: Path
) -> None:
    body = json.dumps({"error": {"message": "boom"}}).encode()
    for _ in range(2):
        upstream.script(body, status=500, content_type="application/json")
    upstream.script(*sse_stream("fine"))
    text = redis_config(redis_server.url, account("only", upstream.url))
    text = text.replace("[routing]\n", "[routing]\nbreaker_threshold = 1\nbreaker_cooldown = 60\n")
    a, b = await two_replicas(tmp_path, replicas, text)
    async with client(a.base_url) as c:
        with pytest.raises(openai.InternalServerError):
            await c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])

    async def b_knows() -> bool:
        _, body = await get_json(b.root + "/admin/accounts")
        return bool(body["accounts"][0]["state"] == "circuit_open")

    await wait_for(b_knows)
    status, ready = await get_json(b.root + "/readyz")
    assert status == 200, ready
    async with client(b.base_url) as c:
        with pytest.raises(openai.InternalServerError):
            await c.chat.completions.create(model="m", messages=[{"role": "user", "content": "y"}])
    assert text_of(await collect(b.base_url)) == "fine"
    assert len(upstream.requests) == 3
