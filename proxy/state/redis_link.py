"""The connection to Redis, and what seamline does while it is gone.

Every call goes through :meth:`RedisLink.run`, bounded by a short timeout. A failure
marks the link down (logged once), and from then on calls fail at once, without
touching the network, until a background task's ``PING`` succeeds again (logged
once). So a Redis outage costs a request nothing but its shared view.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from proxy.logs import get_logger

T = TypeVar("T")
log = get_logger("seamline.shared")

RedisClient = aioredis.Redis
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0


class Unreachable(Exception):
    """Redis cannot answer now; the caller decides on its local view."""


def safe_url(url: str) -> str:
    """The URL without its password, for logs and /readyz."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class RedisLink:
    """One Redis client with a known up/down state and reconnection with backoff."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        # No retries inside redis-py: a retry would multiply the time a request waits.
        self.client: RedisClient = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )
        self.connected = False
        self.down_since: float | None = time.time()
        self.last_error: str | None = "not connected yet"
        self.on_recover: list[Callable[[], None]] = []
        self.on_lost: list[Callable[[], None]] = []
        self._reconnect: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        """Connect once; when that fails, serve locally and keep trying in the background."""
        try:
            async with asyncio.timeout(self.timeout * 4):
                await self.client.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            self._lost(exc)
            return
        self._up()

    async def run(
        self, fn: Callable[[RedisClient], Awaitable[T]], within: float | None = None
    ) -> T:
        """``fn(client)`` within the timeout; raises Unreachable while Redis is down."""
        if not self.connected:
            raise Unreachable(self.last_error or "redis is down")
        try:
            async with asyncio.timeout(within or self.timeout):
                return await fn(self.client)
        except (RedisError, OSError, TimeoutError) as exc:
            self._lost(exc)
            raise Unreachable(self.last_error or "redis is down") from None

    def status(self) -> dict[str, Any]:
        """What /readyz shows about the shared state."""
        out: dict[str, Any] = {"backend": "redis", "url": safe_url(self.url)}
        out["connected"] = self.connected
        if not self.connected:
            out["down_for_s"] = round(time.time() - (self.down_since or time.time()), 1)
            out["error"] = self.last_error
            out["mode"] = "local decisions until redis is back"
        return out

    def _lost(self, exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"[:300]
        if self.connected or self._reconnect is None:
            # Once per outage: a burst of failing calls must not flood the log.
            log.error(
                "shared_state_lost",
                url=safe_url(self.url),
                error=self.last_error,
                detail="requests go on with this replica's local view",
            )
        if self.connected:
            for callback in self.on_lost:
                callback()
        self.connected = False
        if self.down_since is None:
            self.down_since = time.time()
        if not self._closed and (self._reconnect is None or self._reconnect.done()):
            self._reconnect = asyncio.get_running_loop().create_task(self._reconnect_loop())

    def _up(self) -> None:
        was_down = self.down_since
        self.connected = True
        self.down_since = None
        self.last_error = None
        if self._reconnect is not None:
            log.info(
                "shared_state_recovered",
                url=safe_url(self.url),
                down_s=round(time.time() - (was_down or time.time()), 1),
            )
        else:
            log.info("shared_state_connected", url=safe_url(self.url))
        self._reconnect = None
        for callback in self.on_recover:
            callback()

    async def _reconnect_loop(self) -> None:
        # Pooled connections to the Redis that went away are dead: each would fail once
        # more after recovery and count as a second outage.
        with contextlib.suppress(RedisError, OSError):
            await self.client.connection_pool.disconnect()
        delay = BACKOFF_FIRST
        while not self._closed:
            await asyncio.sleep(delay)
            try:
                async with asyncio.timeout(self.timeout * 4):
                    await self.client.ping()
            except (RedisError, OSError, TimeoutError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                delay = min(BACKOFF_MAX, delay * 2)
                continue
            self._up()
            return

    async def close(self) -> None:
        self._closed = True
        if self._reconnect is not None:
            self._reconnect.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnect
        with contextlib.suppress(RedisError, OSError):
            await self.client.aclose()
