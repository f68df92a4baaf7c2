"""Pool state in Redis behind the same StateStore protocol as SQLite.

``load`` reads every account's shared hash; ``save`` merges a snapshot in so that
numbers only grow. Live, atomic updates go through ``shared.py``; the periodic save
is what re-seeds a Redis that came back empty after a restart.
"""

from __future__ import annotations

from typing import Any

from redis.commands.core import AsyncScript

from proxy.state import scripts as rs
from proxy.state.redis_link import RedisClient, RedisLink, Unreachable
from proxy.state.store import States

FLOATS = ("cooldown_until", "backoff", "quota_until", "day_start", "reset_at")
INTS = ("day_requests", "day_tokens", "requests", "errors", "prompt_tokens", "completion_tokens")
TEXTS = ("last_error", "disabled", "disabled_credential")
BREAKER = "breaker:"


def parse_hash(h: dict[str, str]) -> dict[str, Any]:
    """A shared account hash as typed values (absent fields stay absent)."""
    out: dict[str, Any] = {}
    for k in FLOATS:
        if k in h:
            out[k] = float(h[k])
    for k in INTS:
        if k in h:
            out[k] = int(h[k])
    for k in TEXTS:
        if h.get(k):
            out[k] = h[k]
    out["disabled_persist"] = h.get("disabled_persist") == "1"
    out["cooldown_explicit"] = h.get("cooldown_explicit") == "1"
    # breaker:SCOPE -> until: the open circuits, per scope.
    out["breakers"] = {
        k.removeprefix(BREAKER): float(v) for k, v in h.items() if k.startswith(BREAKER)
    }
    return out


class RedisStore:
    """StateStore over Redis; its link is shared with the live sync and OAuth."""

    def __init__(self, link: RedisLink, prefix: str) -> None:
        self.link = link
        self.prefix = prefix
        self._merge: AsyncScript = link.client.register_script(rs.MERGE)

    async def load(self) -> States:
        """Every account's shared state, as ``AccountState.restore`` reads it."""
        pattern = rs.account_key(self.prefix, "*")
        start = len(rs.account_key(self.prefix, ""))

        async def read(c: RedisClient) -> dict[str, dict[str, str]]:
            keys = [k async for k in c.scan_iter(match=pattern, count=100)]
            pipe = c.pipeline(transaction=False)
            for k in keys:
                pipe.hgetall(k)
            return {k[start:]: h for k, h in zip(keys, await pipe.execute(), strict=True)}

        try:
            raw = await self.link.run(read, within=self.link.timeout * 8)
        except Unreachable:
            return {}  # start on the local view; the sync fills it in once Redis is back
        out: States = {}
        for name, h in raw.items():
            saved = parse_hash(h)
            if not saved.pop("disabled_persist"):
                saved.pop("disabled", None)  # restore() reads a disable as a persisted one
            saved.pop("breakers")
            out[name] = saved
        return out

    async def save(self, states: States) -> None:
        """Merge a snapshot in; while Redis is down there is nothing to do."""

        async def write(c: RedisClient) -> None:
            pipe = c.pipeline(transaction=False)
            for name, data in states.items():
                args: list[str] = [self.prefix, name, repr(float(data.get("day_start", 0.0)))]
                for k, v in data.items():
                    if v is None or k == "day_start":
                        continue
                    if isinstance(v, bool):
                        v = int(v)
                    args += [k, repr(v) if isinstance(v, float) else str(v)]
                if data.get("disabled"):
                    args += ["disabled_persist", "1"]
                await self._merge(keys=[], args=args, client=pipe)
            await pipe.execute()

        try:
            await self.link.run(write, within=self.link.timeout * 8)
        except Unreachable:
            return  # the link logged the outage once; recovery asks for a new save

    async def close(self) -> None:
        await self.link.close()
