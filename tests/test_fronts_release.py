"""A client that leaves a translated stream midway releases its account, on every
front (the pool's in-flight count goes back to 0, and the upstream call is closed)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from support.builders import chunk, config_text
from support.seamline import StartSeamline
from support.upstream import Upstream

ADMIN = "admin-secret-key"
HI = [{"role": "user", "content": "hi"}]
BODIES: dict[str, dict[str, Any]] = {
    "/responses": {"model": "m", "input": "hi", "stream": True},
    "/messages": {"model": "m", "max_tokens": 8, "messages": HI, "stream": True},
    "/chat/completions": {"model": "m", "messages": HI, "stream": True},
}


async def in_flight(base: str) -> int:
    url = base.removesuffix("/v1") + "/admin/accounts"
    headers = {"Authorization": f"Bearer {ADMIN}"}
    async with aiohttp.ClientSession() as s, s.get(url, headers=headers) as r:
        rows = json.loads(await r.text())["accounts"]
    return int(rows[0]["in_flight"])


async def until(read: Callable[[], Awaitable[int]], want: int) -> None:
    """Poll ``read()`` (three seconds at most) until it gives ``want``."""
    async with asyncio.timeout(3):
        while (got := await read()) != want:  # noqa: ASYNC110 - polling a server's view
            await asyncio.sleep(0.01)
    assert got == want


@pytest.mark.parametrize("path", sorted(BODIES))
async def test_a_client_leaving_midway_releases_the_account(
    upstream: Upstream, seamline: StartSeamline, path: str
) -> None:
    base = await seamline(
        config_text(("a", upstream.url), server=f"admin_key = {json.dumps(ADMIN)}")
    )
    upstream.script(b"data: " + chunk("first") + b"\n\n", ending="hang")
    async with aiohttp.ClientSession() as s, s.post(base + path, json=BODIES[path]) as r:
        assert r.status == 200
        first = await r.content.readany()
        assert b"first" in first or b"event:" in first
        assert await in_flight(base) == 1
    await until(lambda: in_flight(base), 0)

    async def closed() -> int:
        return len(upstream.closed)

    await until(closed, 1)  # the upstream call was closed with the client's leaving
