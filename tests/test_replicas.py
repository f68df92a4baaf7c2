"""Several seamline processes sharing one real Redis behave as one pool."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from proxy import config as cfg
from proxy.pool.accounts import Limits, Pool
from proxy.state.redis_link import RedisLink
from proxy.state.shared import SharedPool
from support.builders import account, completion, key_of, redis_config, sse_stream
from support.clients import client, collect, get_json, text_of
from support.redis_replicas import RedisServer, Replica, start_replica, two_replicas
from support.upstream import Upstream
from support.waiting import wait_for

QUOTA_BODY = json.dumps({"error": {"code": "insufficient_quota", "message": "quota exceeded"}})


class _Any:
    def __eq__(self, other: object) -> bool:
        return True


ANY: Any = _Any()  # the client id in the refresh form is the default one; any will do


def keys_used(upstream: Upstream) -> list[str]:
    return [r["headers"]["Authorization"].removeprefix("Bearer ") for r in upstream.requests]


async def test_an_account_exhausted_through_replica_a_is_skipped_by_replica_b(
    upstream: Upstream, redis_server: RedisServer, replicas: list[Replica], tmp_path: Path
) -> None:
    upstream.script(QUOTA_BODY.encode(), status=429, content_type="application/json")
    upstream.script(*sse_stream("fine"))
    accounts = account("a1", upstream.url) + account("a2", upstream.url)
    a, b = await two_replicas(
        tmp_path, replicas, redis_config(redis_server.url, accounts, "fill_first")
    )

    assert text_of(await collect(a.base_url)) == "fine"
    assert keys_used(upstream) == [key_of("a1"), key_of("a2")]

    async def b_knows() -> bool:
        _, body = await get_json(b.root + "/admin/accounts")
        return bool(body["accounts"][0]["state"] == "quota_exhausted")

    await wait_for(b_knows)
    for _ in range(3):
        assert text_of(await collect(b.base_url)) == "fine"
    assert keys_used(upstream) == [key_of("a1")] + [key_of("a2")] * 4


async def test_an_rpm_limit_holds_across_both_replicas(
    upstream: Upstream, redis_server: RedisServer, replicas: list[Replica], tmp_path: Path
) -> None:
    upstream.script(completion("ok"), content_type="application/json")
    accounts = account("only", upstream.url, rpm=3)
    a, b = await two_replicas(tmp_path, replicas, redis_config(redis_server.url, accounts))

    async def ask(base_url: str) -> str:
        async with client(base_url) as c:
            try:
                await c.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "hi"}]
                )
            except openai.RateLimitError:
                return "429"
            return "ok"

    answers = await asyncio.gather(*(ask(r.base_url) for r in (a, b) * 4))
    assert sorted(answers) == ["429"] * 5 + ["ok"] * 3
    assert len(upstream.requests) == 3


async def test_fifty_concurrent_requests_over_two_replicas_refresh_the_token_once(
    upstream: Upstream,
    redis_server: RedisServer,
    replicas: list[Replica],
    tmp_path: Path,
    aiohttp_server: Any,
) -> None:
    refreshes: list[dict[str, str]] = []

    async def token(request: web.Request) -> web.Response:
        refreshes.append(dict(await request.post()))  # type: ignore[arg-type]
        await asyncio.sleep(0.3)  # long enough for every request to want a refresh
        body = {"access_token": "fresh", "refresh_token": "r2", "expires_in": 3600}
        return web.json_response(body)

    app = web.Application()
    app.router.add_post("/token", token)
    token_server = await aiohttp_server(app)
    upstream.script(*sse_stream("fine"))
    expired = {"access_token": "old", "refresh_token": "r1", "expiry_date": 1000}
    accounts = ""
    for side in ("a", "b"):  # each replica its own file, as on separate hosts
        creds = tmp_path / side / "creds.json"
        creds.parent.mkdir()
        creds.write_text(json.dumps(expired))
        creds.chmod(0o600)
    oauth = (
        '[[accounts]]\nname = "qwen"\nkind = "qwen-oauth"\ncredentials = "CREDS"\n'
        f'base_url = "{upstream.url}"\ntoken_url = "{token_server.make_url("/token")}"\n'
    )
    started = []
    for side in ("a", "b"):
        path = tmp_path / f"{side}.toml"
        creds = tmp_path / side / "creds.json"
        accounts = oauth.replace("CREDS", str(creds))
        # A Redis slower than timeout_s is decided on locally, a second refresh included
        # (by design): on a loaded machine the default 0.25 s is not enough here.
        text = redis_config(redis_server.url, accounts).replace("sync_s", "timeout_s = 3\nsync_s")
        path.write_text(text)
        path.chmod(0o600)
        started.append(start_replica(path))
    a, b = await asyncio.gather(*started)
    replicas += [a, b]

    results = await asyncio.gather(*(collect(r.base_url) for r in (a, b) * 25))
    assert all(text_of(chunks) == "fine" for chunks in results)
    assert refreshes == [{"grant_type": "refresh_token", "refresh_token": "r1", "client_id": ANY}]
    assert set(keys_used(upstream)) == {"fresh"}
    for side in ("a", "b"):  # the replica that did not refresh kept the shared token too
        saved = json.loads((tmp_path / side / "creds.json").read_text())
        assert (saved["access_token"], saved["refresh_token"]) == ("fresh", "r2")


async def test_redis_killed_mid_traffic_fails_no_request_and_its_return_is_picked_up(
    upstream: Upstream, redis_server: RedisServer, replicas: list[Replica], tmp_path: Path
) -> None:
    upstream.script(*sse_stream("fine"), pause=0.002)
    accounts = account("a1", upstream.url) + account("a2", upstream.url)
    a, b = await two_replicas(tmp_path, replicas, redis_config(redis_server.url, accounts))

    async def connected(r: Replica) -> bool:
        status, body = await get_json(r.root + "/readyz")
        assert status == 200  # an outage never makes a replica unready
        return bool(body["shared_state"]["connected"])

    done: list[str] = []
    stop = asyncio.Event()

    async def traffic(r: Replica) -> None:
        while not stop.is_set():
            done.append(text_of(await collect(r.base_url)))

    workers = [asyncio.create_task(traffic(r)) for r in (a, b, a, b)]
    try:
        await wait_for(lambda: _true(len(done) >= 10))
        redis_server.kill()
        for r in (a, b):
            await wait_for(lambda r=r: _not(connected(r)))
        during = len(done)
        await wait_for(lambda: _true(len(done) >= during + 10))
        redis_server.start()
        for r in (a, b):
            await wait_for(lambda r=r: connected(r))
        after = len(done)
        await wait_for(lambda: _true(len(done) >= after + 10))
    finally:
        stop.set()
        await asyncio.gather(*workers)
    assert set(done) == {"fine"}
    assert len(upstream.requests) == len(done)  # and no request needed a second try
    async with aiohttp.ClientSession() as s, s.get(a.root + "/metrics") as resp:
        assert "seamline_shared_state_connected 1.0" in await resp.text()
    await asyncio.sleep(0.3)  # the new Redis gets the replicas' view merged back in
    for r in (a, b):
        assert (r.logged("shared_state_lost"), r.logged("shared_state_recovered")) == (1, 1)


async def _true(value: bool) -> bool:
    return value


async def _not(check: Any) -> bool:
    return not await check


async def test_a_crashed_replicas_leases_stop_counting(redis_server: RedisServer) -> None:
    limits = [Limits("only", max_concurrent=1)]
    crashed_link, live_link = RedisLink(redis_server.url, 1.0), RedisLink(redis_server.url, 1.0)
    crashed = SharedPool(Pool(limits), crashed_link, "t", lease_s=0.5)
    live = SharedPool(Pool(limits), live_link, "t", lease_s=0.5)
    for link in (crashed_link, live_link):
        await link.start()
    now = time.time()
    got, _ = await crashed.take(
        crashed.pool.candidates(None, now), True, now, crashed.pool.choose, "*"
    )
    assert got is not None
    await crashed_link.close()  # gone without releasing, as a killed process would be

    got, _ = await live.take(live.pool.candidates(None, now), True, now, live.pool.choose, "*")
    assert got is None and live.pool.states["only"].others_in_flight == 1
    await asyncio.sleep(0.6)
    now = time.time()
    live.pool.states["only"].others_in_flight = 0
    got, _ = await live.take(live.pool.candidates(None, now), True, now, live.pool.choose, "*")
    assert got is not None
    await live_link.close()


async def test_an_operators_reset_on_one_replica_clears_the_account_on_the_other(
    redis_server: RedisServer,
) -> None:
    from proxy.state.redis_store import RedisStore

    links = [RedisLink(redis_server.url, 1.0) for _ in range(2)]
    one, two = (SharedPool(Pool([Limits("a")]), link, "t") for link in links)
    for link in links:
        await link.start()
    now = time.time()
    a1, a2 = one.pool.states["a"], two.pool.states["a"]
    one.pool.quota_exhausted(a1, now, 3600)
    one.pool.rate_limited(a1, now, 600)
    for n in range(3):
        one.pool.failed(a1, now, "500", "chat", n)
    await one.flush()
    await two.sync()
    assert two.pool.block(a2, now) is not None
    assert a2.open_breakers().keys() == {"chat"}

    two.pool.reset(a2, time.time())
    await two.flush()
    # A periodic snapshot from the replica that has not heard yet brings nothing back.
    await RedisStore(links[0], "t").save({"a": a1.to_dict()})
    await one.sync()
    assert one.pool.block(a1, time.time()) is None
    assert a1.open_breakers() == {}
    assert (a1.quota_until, a1.cooldown_until) == (0.0, 0.0)
    for link in links:
        await link.close()


@pytest.mark.parametrize(
    ("state", "problem"),
    [
        ('backend = "redis"', "state.url: required key is missing"),
        ('backend = "redis"\nurl = "http://x"', "state.url: expected a redis://"),
        ('backend = "mysql"', "state.backend: expected one of sqlite, memory, redis"),
        ('url = "redis://x"', 'state.url: only used with backend = "redis"'),
        ('backend = "redis"\nurl = "redis://x"\npath = "a.db"', "state.path: only used with"),
        ('backend = "redis"\nurl = "redis://x"\ntimeout_s = 0', "state.timeout_s: must be"),
    ],
)
def test_bad_state_config_names_the_key(state: str, problem: str) -> None:
    text = f'[state]\n{state}\n[[accounts]]\nname = "a"\nbase_url = "http://127.0.0.1:9/v1"\n'
    with pytest.raises(cfg.ConfigError, match="^t.toml: " + problem.replace("(", r"\(")):
        cfg.parse(text, "t.toml", {})


def test_redis_state_config_and_its_password_is_a_secret() -> None:
    text = '[state]\nbackend = "redis"\nurl = "redis://:pw-123@127.0.0.1:6379/2"\nprefix = "x"\n'
    text += '[[accounts]]\nname = "a"\nbase_url = "http://127.0.0.1:9/v1"\n'
    conf = cfg.parse(text, "t.toml", {})
    assert (conf.state.backend, conf.state.prefix, conf.state_path) == ("redis", "x", ":memory:")
    assert "pw-123" in conf.secrets()
