"""Stored Responses (``store: true``): what a later turn's ``previous_response_id`` needs.

Each record holds the response object as the client got it and the conversation's
items up to and including its output, so a client that sends only the new items gets
the whole conversation upstream. Bounded: by age (``ttl_s``), by record size (a record
past ``max_record_bytes`` is not kept) and, for SQLite and memory, by the total kept
(the oldest go first past ``max_bytes``). Redis bounds by age per key; its memory is
the Redis server's own (``maxmemory``).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from proxy.logs import get_logger
from proxy.state.redis_link import RedisLink, Unreachable

log = get_logger("seamline.state")

Record = dict[str, Any]


class Conversations(Protocol):
    """Where stored responses live."""

    async def get(self, response_id: str) -> Record | None: ...

    async def put(self, response_id: str, record: Record) -> bool: ...

    async def delete(self, response_id: str) -> bool: ...

    async def close(self) -> None: ...


def _encode(record: Record) -> bytes:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()


class MemoryConversations:
    """Kept for the life of the process, the oldest dropped past ``max_bytes``."""

    def __init__(self, ttl_s: float, max_bytes: int, max_record_bytes: int) -> None:
        self.ttl_s, self.max_bytes, self.max_record_bytes = ttl_s, max_bytes, max_record_bytes
        self._records: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._size = 0

    async def get(self, response_id: str) -> Record | None:
        found = self._records.get(response_id)
        if found is None:
            return None
        if found[0] <= time.time():
            self._drop(response_id)
            return None
        record: Record = json.loads(found[1])
        return record

    async def put(self, response_id: str, record: Record) -> bool:
        data = _encode(record)
        if len(data) > self.max_record_bytes:
            return False
        self._drop(response_id)
        self._records[response_id] = (time.time() + self.ttl_s, data)
        self._size += len(data)
        while self._size > self.max_bytes and self._records:
            self._drop(next(iter(self._records)))
        return True

    async def delete(self, response_id: str) -> bool:
        return self._drop(response_id)

    def _drop(self, response_id: str) -> bool:
        found = self._records.pop(response_id, None)
        if found is not None:
            self._size -= len(found[1])
        return found is not None

    async def close(self) -> None:
        self._records.clear()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS stored_response (
    id TEXT PRIMARY KEY,
    expires REAL NOT NULL,
    size INTEGER NOT NULL,
    data BLOB NOT NULL
)
"""


class SQLiteConversations:
    """In the state database's file, beside the pool's state, written off the loop."""

    def __init__(self, path: str, ttl_s: float, max_bytes: int, max_record_bytes: int) -> None:
        self.path = path
        self.ttl_s, self.max_bytes, self.max_record_bytes = ttl_s, max_bytes, max_record_bytes
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seamline-responses")
        self._con: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._con is None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            con = sqlite3.connect(self.path, check_same_thread=False, timeout=5)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute(_SCHEMA)
            con.commit()
            self._con = con
        return self._con

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _get(self, response_id: str) -> bytes | None:
        row = (
            self._connect()
            .execute(
                "SELECT data FROM stored_response WHERE id = ? AND expires > ?",
                (response_id, time.time()),
            )
            .fetchone()
        )
        return None if row is None else bytes(row[0])

    def _put(self, response_id: str, data: bytes) -> None:
        con = self._connect()
        now = time.time()
        with con:
            con.execute("DELETE FROM stored_response WHERE expires <= ?", (now,))
            con.execute(
                "INSERT OR REPLACE INTO stored_response(id, expires, size, data) "
                "VALUES (?, ?, ?, ?)",
                (response_id, now + self.ttl_s, len(data), data),
            )
            total = con.execute("SELECT COALESCE(SUM(size), 0) FROM stored_response").fetchone()
            excess = int(total[0]) - self.max_bytes
            if excess > 0:
                # The oldest go first (they expire first), until the rest fit.
                rows = con.execute(
                    "SELECT id, size FROM stored_response ORDER BY expires"
                ).fetchall()
                for rid, size in rows:
                    if excess <= 0:
                        break
                    con.execute("DELETE FROM stored_response WHERE id = ?", (rid,))
                    excess -= size

    def _delete(self, response_id: str) -> bool:
        con = self._connect()
        with con:
            cur = con.execute("DELETE FROM stored_response WHERE id = ?", (response_id,))
        return cur.rowcount > 0

    async def get(self, response_id: str) -> Record | None:
        return _decode(await self._run(self._get, response_id))

    async def put(self, response_id: str, record: Record) -> bool:
        data = _encode(record)
        if len(data) > self.max_record_bytes:
            return False
        await self._run(self._put, response_id, data)
        return True

    async def delete(self, response_id: str) -> bool:
        deleted: bool = await self._run(self._delete, response_id)
        return deleted

    async def close(self) -> None:
        def close() -> None:
            if self._con is not None:
                self._con.close()
                self._con = None

        await self._run(close)
        self._pool.shutdown(wait=True)


class RedisConversations:
    """In Redis, one key per response with its age limit, so every replica finds it."""

    def __init__(self, link: RedisLink, prefix: str, ttl_s: float, max_record_bytes: int) -> None:
        self.link, self.prefix = link, prefix
        self.ttl_s, self.max_record_bytes = ttl_s, max_record_bytes

    def _key(self, response_id: str) -> str:
        return f"{self.prefix}:response:{response_id}"

    async def get(self, response_id: str) -> Record | None:
        key = self._key(response_id)
        try:
            data = await self.link.run(lambda c: c.get(key), within=self.link.timeout * 8)
        except Unreachable:
            return None
        return _decode(data)

    async def put(self, response_id: str, record: Record) -> bool:
        data = _encode(record)
        if len(data) > self.max_record_bytes:
            return False
        key, ttl = self._key(response_id), max(1, int(self.ttl_s))
        try:
            await self.link.run(lambda c: c.set(key, data, ex=ttl), within=self.link.timeout * 8)
        except Unreachable:
            log.warning("response_not_stored", response_id=response_id, detail="Redis is down")
            return False
        return True

    async def delete(self, response_id: str) -> bool:
        key = self._key(response_id)
        try:
            count = await self.link.run(lambda c: c.delete(key), within=self.link.timeout * 8)
        except Unreachable:
            return False
        return bool(count)

    async def close(self) -> None:
        return None


def _decode(data: bytes | str | None) -> Record | None:
    if data is None:
        return None
    record: Record = json.loads(data)
    return record
