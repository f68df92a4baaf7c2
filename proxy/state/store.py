"""Where pool state persists, behind one small protocol.

SQLite is the default; ``:memory:`` keeps nothing. Writes happen on one worker
thread, so the event loop (and so every stream) never waits on the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from proxy.logs import get_logger
from proxy.pool.accounts import Pool

log = get_logger("seamline.state")

States = dict[str, dict[str, Any]]


class StateError(Exception):
    """The persisted state cannot be read; the message names the file."""


class StateStore(Protocol):
    """Persisted per-account state, keyed by account name."""

    async def load(self) -> States: ...

    async def save(self, states: States) -> None: ...

    async def close(self) -> None: ...


class MemoryStore:
    """Keeps state for the life of the process only."""

    def __init__(self) -> None:
        self.states: States = {}

    async def load(self) -> States:
        return {k: dict(v) for k, v in self.states.items()}

    async def save(self, states: States) -> None:
        self.states.update({k: dict(v) for k, v in states.items()})

    async def close(self) -> None:
        return None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS account_state (
    name TEXT PRIMARY KEY,
    data TEXT NOT NULL,
    updated REAL NOT NULL
)
"""


def read_states(path: str) -> States:
    """Read persisted state synchronously (for ``seamline accounts status``)."""
    if path == ":memory:" or not Path(path).exists():
        return {}
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT name, data FROM account_state").fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return {}
        raise StateError(f"{path}: cannot read the state database: {exc}") from None
    except sqlite3.DatabaseError as exc:
        raise StateError(f"{path}: cannot read the state database: {exc}") from None
    finally:
        con.close()
    return {name: json.loads(data) for name, data in rows}


class SQLiteStore:
    """Pool state in an embedded SQLite database, written off the event loop."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seamline-state")
        self._con: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._con is None:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            con = sqlite3.connect(self.path, check_same_thread=False)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            con.execute(_SCHEMA)
            con.commit()
            self._con = con
        return self._con

    def _load(self) -> States:
        try:
            rows = self._connect().execute("SELECT name, data FROM account_state").fetchall()
            return {name: json.loads(data) for name, data in rows}
        except (sqlite3.DatabaseError, ValueError) as exc:
            # A corrupt file must not keep the proxy down: keep it aside for a look
            # and start with a fresh one.
            self._close()
            aside = f"{self.path}.corrupt-{int(time.time())}"
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            log.error("state_database_unreadable", path=self.path, moved_to=aside, error=str(exc))
            self._connect()
            return {}

    def _save(self, states: States) -> None:
        con = self._connect()
        now = time.time()
        with con:
            con.executemany(
                "INSERT INTO account_state(name, data, updated) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET data = excluded.data, updated = excluded.updated",
                [(name, json.dumps(data), now) for name, data in states.items()],
            )

    def _close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def load(self) -> States:
        result: States = await self._run(self._load)
        return result

    async def save(self, states: States) -> None:
        await self._run(self._save, states)

    async def close(self) -> None:
        await self._run(self._close)
        self._pool.shutdown(wait=True)


def open_store(path: str) -> StateStore:
    return MemoryStore() if path == ":memory:" else SQLiteStore(path)


class Persister:
    """Saves the pool's state shortly after it changes, never on the request path."""

    def __init__(self, pool: Pool, store: StateStore, interval: float = 0.25) -> None:
        self.pool = pool
        self.store = store
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    async def restore(self) -> None:
        saved = await self.store.load()
        for name, st in self.pool.states.items():
            if name in saved:
                st.restore(saved[name])

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def flush(self) -> None:
        if not self.pool.changed:
            return
        self.pool.changed = False
        snapshot = {name: st.to_dict() for name, st in self.pool.states.items()}
        try:
            await self.store.save(snapshot)
        except Exception as exc:  # a full disk must not take the proxy down
            self.pool.changed = True
            log.error("state_save_failed", error=str(exc))
        except asyncio.CancelledError:
            # stop() cancels the loop, maybe before the worker took this save: its own
            # last flush must then write the snapshot rather than find nothing changed.
            self.pool.changed = True
            raise

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
        await self.store.close()
