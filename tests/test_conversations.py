"""Stored responses (the Responses front's ``store``): every backend keeps what a later
turn needs, forgets it past its age, refuses a record past its size and, where it
holds the bytes itself, drops the oldest past its total."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.state.conversations import (
    Conversations,
    MemoryConversations,
    RedisConversations,
    SQLiteConversations,
)
from proxy.state.redis_link import RedisLink
from support.redis_replicas import RedisServer

RECORD = {"response": {"id": "resp_1", "output": []}, "items": [{"role": "user", "content": "ü"}]}


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[str, Conversations]]:
    kind: str = request.param
    made: Conversations
    link: RedisLink | None = None
    if kind == "memory":
        made = MemoryConversations(ttl_s=1, max_bytes=400, max_record_bytes=200)
    elif kind == "sqlite":
        made = SQLiteConversations(str(tmp_path / "s.db"), 1, 400, 200)
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        link = RedisLink(server.url, 1.0)
        await link.start()
        made = RedisConversations(link, "t", 1, 200)
    yield kind, made
    await made.close()
    if link is not None:
        await link.close()


async def test_a_record_is_kept_found_and_deleted(store: tuple[str, Conversations]) -> None:
    _, kept = store
    assert await kept.put("resp_1", RECORD)
    assert await kept.get("resp_1") == RECORD
    assert await kept.get("resp_2") is None
    assert await kept.delete("resp_1")
    assert await kept.get("resp_1") is None
    assert not await kept.delete("resp_1")


async def test_a_record_past_its_size_is_not_kept(store: tuple[str, Conversations]) -> None:
    _, kept = store
    big = {"response": {"id": "x"}, "items": ["y" * 300]}
    assert not await kept.put("resp_big", big)
    assert await kept.get("resp_big") is None


async def test_a_record_past_its_age_is_forgotten(store: tuple[str, Conversations]) -> None:
    _, kept = store
    await kept.put("resp_1", RECORD)
    await asyncio.sleep(2.1)
    assert await kept.get("resp_1") is None


async def test_the_oldest_go_first_past_the_total(store: tuple[str, Conversations]) -> None:
    _, kept = store
    for i in range(6):  # ~110 bytes each, 400 in all: the first ones go
        assert await kept.put(f"resp_{i}", {"response": {"id": i}, "items": ["z" * 80]})
    assert await kept.get("resp_5") is not None
    if isinstance(kept, RedisConversations):
        # Redis bounds its memory itself (maxmemory); here every key has its age limit.
        ttl = await kept.link.run(lambda c: c.ttl("t:response:resp_0"))
        assert ttl == 1
    else:
        assert await kept.get("resp_0") is None
