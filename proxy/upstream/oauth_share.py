"""One OAuth refresh at a time across replicas, and the fresh token shared via Redis.

Refresh tokens rotate: two replicas refreshing with the same one would leave one of
them holding a token the server already replaced. So a replica that needs a new token
first looks for one another replica stored; failing that it takes a lock (with an
expiry, so a crashed holder cannot keep it), refreshes, and stores the answer; the
others wait for that answer instead of refreshing. While Redis is down, a replica
refreshes on its own as a single process would. Tokens are stored, never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable

from redis.commands.core import AsyncScript

from proxy.state import scripts as rs
from proxy.state.redis_link import RedisClient, RedisLink, Unreachable
from proxy.upstream.credentials import Credentials, OAuthError, credentials_from

LOCK_S = 30.0  # longer than a refresh may take (its HTTP timeout)
POLL_S = 0.05


class TokenShare:
    """Shared credentials and the refresh lock for qwen-oauth accounts."""

    def __init__(self, link: RedisLink, prefix: str, wait_s: float = LOCK_S) -> None:
        self.link = link
        self.prefix = prefix
        self.wait_s = wait_s
        self._unlock: AsyncScript = link.client.register_script(rs.UNLOCK)

    async def read(self, name: str) -> Credentials | None:
        raw = await self.link.run(lambda c: c.get(rs.oauth_key(self.prefix, name)))
        if not raw:
            return None
        try:
            return credentials_from(json.loads(raw), f"shared credentials of {name!r}")
        except (ValueError, OAuthError):
            return None  # not ours or damaged: refresh and overwrite it

    async def refresh(
        self,
        name: str,
        current: Credentials,
        good: Callable[[Credentials], bool],
        do_refresh: Callable[[Credentials], Awaitable[Credentials]],
    ) -> Credentials:
        """Credentials ``good`` accepts: another replica's, or from refreshing under the lock."""
        lock = rs.oauth_lock_key(self.prefix, name)
        me = secrets.token_hex(8)
        deadline = time.monotonic() + self.wait_s
        try:
            while True:
                shared = await self.read(name)
                if shared is not None and good(shared):
                    return shared
                took = await self.link.run(
                    lambda c: c.set(lock, me, nx=True, px=int(LOCK_S * 1000))
                )
                if took:
                    return await self._refresh_locked(name, lock, me, current, good, do_refresh)
                if time.monotonic() > deadline:
                    break  # the holder is stuck: better a refresh of our own than none
                await asyncio.sleep(POLL_S)
        except Unreachable:
            pass
        return await do_refresh(current)

    async def _refresh_locked(
        self,
        name: str,
        lock: str,
        me: str,
        current: Credentials,
        good: Callable[[Credentials], bool],
        do_refresh: Callable[[Credentials], Awaitable[Credentials]],
    ) -> Credentials:
        try:
            # Another replica may have stored a token between our look and the lock.
            shared = await self.read(name)
            if shared is not None and good(shared):
                return shared
            # The newest refresh token is the only one the server still accepts.
            newest = current
            if shared is not None and shared.expiry_date > current.expiry_date:
                newest = shared
            new = await do_refresh(newest)
            text = json.dumps(new.to_json())

            async def store(c: RedisClient) -> None:
                await c.set(rs.oauth_key(self.prefix, name), text)

            with contextlib.suppress(Unreachable):
                await self.link.run(store)
            return new
        finally:
            with contextlib.suppress(Unreachable):
                await self.link.run(lambda c: self._unlock(keys=[lock], args=[me], client=c))
