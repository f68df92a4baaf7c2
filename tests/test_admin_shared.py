"""The operator's actions reach every replica sharing a real Redis, and stay done."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from proxy.pool.accounts import Limits, Pool
from proxy.state.redis_link import RedisLink
from proxy.state.redis_store import RedisStore
from proxy.state.shared import SharedPool
from support.admin import admin, answer, fetch, fingerprint, rate_limit
from support.builders import ADMIN_KEY, key_of
from support.redis_replicas import RedisServer, Replica, start_replica
from support.upstream import Upstream


async def state_of(replica: Replica, name: str) -> dict[str, Any]:
    reply = await admin("GET", replica.root, "/admin/accounts")
    return next(row for row in reply.json()["accounts"] if row["name"] == name)


async def until(replica: Replica, name: str, state: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while (await state_of(replica, name))["state"] != state:
        assert time.monotonic() < deadline, f"{name} never became {state} on the replica"
        await asyncio.sleep(0.05)


async def test_reset_disable_and_enable_on_one_replica_reach_the_other(
    upstream: Upstream, redis_server: RedisServer, replicas: list[Replica], tmp_path: Path
) -> None:
    rate_limit(upstream)
    answer(upstream, "ok")
    text = f"""
[server]
port = 0
admin_key = {json.dumps(ADMIN_KEY)}
[routing]
strategy = "fill_first"
[state]
backend = "redis"
url = "{redis_server.url}"
sync_s = 0.1
[[accounts]]
name = "a1"
base_url = "{upstream.url}"
api_key = "{key_of("a1")}"
[[accounts]]
name = "a2"
base_url = "{upstream.url}"
api_key = "{key_of("a2")}"
"""
    path = tmp_path / "seamline.toml"
    path.write_text(text)
    path.chmod(0o600)
    one, two = await asyncio.gather(start_replica(path), start_replica(path))
    replicas.extend((one, two))

    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    headers = {"Content-Type": "application/json"}
    await fetch("POST", one.base_url + "/chat/completions", body.encode(), headers)
    await until(two, "a1", "rate_limited")
    assert (await admin("POST", one.root, "/admin/accounts/a1/reset")).status == 200
    await until(two, "a1", "available")

    disabled = await admin("POST", two.root, "/admin/accounts/a2/disable", {"reason": "x"})
    assert disabled.status == 200
    await until(one, "a2", "disabled")
    assert (await state_of(one, "a2"))["disabled"] == "by an operator: x"
    assert (await admin("POST", one.root, "/admin/accounts/a2/enable")).status == 200
    await until(two, "a2", "available")
    await asyncio.sleep(2.5)  # a snapshot save of each replica (every 2 s) brings nothing back
    assert (await state_of(one, "a2"))["state"] == (await state_of(two, "a2"))["state"]
    assert (await state_of(two, "a2"))["state"] == "available"

    for r in (one, two):
        r.proc.terminate()
        await r.proc.wait()
        assert r.reader is not None
        await r.reader
    logged = [json.loads(line) for r in (one, two) for line in r.lines if "admin_action" in line]
    assert sorted(e["action"] for e in logged) == ["disable", "enable", "reset"]
    assert {e["by"] for e in logged} == {fingerprint(ADMIN_KEY)}
    assert not any(ADMIN_KEY in line for r in (one, two) for line in r.lines)


async def test_a_stale_snapshot_does_not_disable_again_what_an_operator_enabled(
    redis_server: RedisServer,
) -> None:
    links = [RedisLink(redis_server.url, 1.0) for _ in range(2)]
    one, two = (SharedPool(Pool([Limits("a")]), link, "t") for link in links)
    for link in links:
        await link.start()
    a1, a2 = one.pool.states["a"], two.pool.states["a"]
    one.pool.operator_disable(a1, "by an operator: maintenance")
    await one.flush()
    await two.sync()
    assert a2.disabled == "by an operator: maintenance"

    two.pool.enable(a2, time.time())
    await two.flush()
    # The replica that has not heard yet saves its snapshot: the disable stays undone.
    await RedisStore(links[0], "t").save({"a": a1.to_dict()})
    await one.sync()
    assert a1.disabled is None and a1.enabled_at == a2.enabled_at
    # A disable after that enable is news, and is shared.
    one.pool.operator_disable(a1, "by an operator: again")
    await one.flush()
    await two.sync()
    assert a2.disabled == "by an operator: again"
    for link in links:
        await link.close()
