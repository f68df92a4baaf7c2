"""``seamline accounts status | login``: the pool as seen from the command line."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

import aiohttp

from proxy.config import Config
from proxy.gateway.routing import make_pool
from proxy.state.store import StateError, States, read_states
from proxy.upstream.credentials import OAuthError
from proxy.upstream.oauth import (
    DEFAULT_CLIENT_ID,
    DEFAULT_DEVICE_URL,
    DEFAULT_TOKEN_URL,
    device_login,
)

_COLUMNS = (
    ("name", "ACCOUNT"),
    ("state", "STATE"),
    ("until", "UNTIL"),
    ("requests_today", "REQ TODAY"),
    ("tokens_today", "TOKENS TODAY"),
    ("errors", "ERRORS"),
    ("last_error", "LAST ERROR"),
)


def status_rows(config: Config, now: float) -> list[dict[str, Any]]:
    """Per-account state from the persisted store, as the admin endpoint shows it."""
    pool = make_pool(config)
    try:
        if config.state.backend == "redis":
            saved = asyncio.run(_redis_states(config))
        else:
            saved = read_states(config.state_path)
    except StateError as exc:
        print(f"seamline: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    for name, st in pool.states.items():
        if name in saved:
            st.restore(saved[name])
    rows = pool.snapshot(now)
    for row in rows:
        row["until"] = (
            row["quota_exhausted_until"]
            or row["cooling_down_until"]
            or row["circuit_open_until"]
            or ""
        )
        if row["disabled"]:
            row["last_error"] = row["disabled"]
    return rows


async def _redis_states(config: Config) -> States:
    """The shared state the replicas keep in Redis."""
    from proxy.state.redis_link import RedisLink, safe_url  # late: only the redis backend needs it
    from proxy.state.redis_store import RedisStore

    state = config.state
    # A command line can wait longer than a request: a second, not timeout_s.
    link = RedisLink(state.url, max(state.timeout_s, 1.0))
    try:
        await link.start()
        if not link.connected:
            raise StateError(f"{safe_url(state.url)}: redis is unreachable ({link.last_error})")
        return await RedisStore(link, state.prefix).load()
    finally:
        await link.close()


def print_status(config: Config, out: TextIO = sys.stdout, now: float | None = None) -> None:
    rows = status_rows(config, time.time() if now is None else now)
    table = [[title for _, title in _COLUMNS]]
    table += [["" if row[key] is None else str(row[key]) for key, _ in _COLUMNS] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(_COLUMNS))]
    for r in table:
        print(
            "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip(), file=out
        )
    if config.state_path == ":memory:":
        print("(state.path is :memory:, so nothing was persisted)", file=out)


async def login(
    config: Config,
    name: str,
    out: TextIO = sys.stdout,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> int:
    """Run the OAuth device-code flow for a qwen-oauth account; 0 on success."""
    acc = next((a for a in config.accounts if a.name == name), None)
    if acc is None:
        print(f"seamline: {config.path}: no account named {name!r}", file=sys.stderr)
        return 2
    if acc.kind != "qwen-oauth":
        print(
            f'seamline: {config.path}: account {name!r} is not kind = "qwen-oauth"', file=sys.stderr
        )
        return 2
    async with aiohttp.ClientSession() as session:
        try:
            await device_login(
                session,
                credentials_path=acc.credentials,
                device_url=acc.device_url or DEFAULT_DEVICE_URL,
                token_url=acc.token_url or DEFAULT_TOKEN_URL,
                client_id=acc.client_id or DEFAULT_CLIENT_ID,
                out=out,
                sleep=sleep,
                proxy_for=lambda url: config.proxy_for(acc, url),
            )
        except OAuthError as exc:
            print(f"seamline: login failed: {exc}", file=sys.stderr)
            return 1
    print(f"logged in: credentials written to {acc.credentials}", file=out)
    return 0
