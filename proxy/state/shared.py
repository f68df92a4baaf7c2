"""Several replicas, one pool: the local Pool kept in step with shared state in Redis.

The Pool stays the synchronous place where decisions are made. This module adds:

- ``take``: one Lua call per attempt that atomically re-checks the chosen candidates
  against every replica's view and takes a lease, an rpm slot and the daily count;
- reports: what the pool decided (cooldowns, quota, breaker, disables, usage), merged
  into Redis by one background task as soon as it happens, never on the request path;
- a sync every ``sync_s`` that pulls all accounts' shared state into the local pool and
  renews this replica's leases, so a crashed replica's requests stop counting once its
  leases expire.

While Redis is unreachable every call fails at once (see redis_link.py) and requests
are decided on the local view; what was learned meanwhile is reported on recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis.commands.core import AsyncScript

from proxy.logs import get_logger
from proxy.pool.accounts import RPM_WINDOW, AccountState, Change, Pool, last_reset
from proxy.state import scripts as rs
from proxy.state.redis_link import RedisClient, RedisLink, Unreachable
from proxy.state.redis_store import RedisStore, parse_hash
from proxy.state.store import Persister

log = get_logger("seamline.shared")

LEASE_S = 30.0  # a crashed replica's requests stop counting after this long
SAVE_S = 2.0  # how often a replica merges its snapshot in (re-seeds an emptied Redis)


@dataclass
class Report:
    """What this replica learned about one account since it last told Redis."""

    requests: int = 0
    day_requests: int = 0
    errors: int = 0
    prompt: int = 0
    completion: int = 0
    times: bool = False
    breakers: set[str] = field(default_factory=set)  # scopes whose circuit changed here
    reset: bool = False  # an operator reset the account here
    disable: str = ""  # "set" or "clear" when a disable or enable happened here

    def absorb(self, older: Report) -> None:
        """Fold in a report that could not be sent (this one is newer)."""
        self.requests += older.requests
        self.day_requests += older.day_requests
        self.errors += older.errors
        self.prompt += older.prompt
        self.completion += older.completion
        self.times |= older.times
        self.breakers |= older.breakers
        self.reset |= older.reset
        self.disable = self.disable or older.disable


class SharedPool:
    """The pool's listener: shares its decisions and pulls in everyone else's."""

    def __init__(
        self,
        pool: Pool,
        link: RedisLink,
        prefix: str,
        sync_s: float = 0.5,
        lease_s: float = LEASE_S,
    ) -> None:
        self.pool = pool
        self.link = link
        self.prefix = prefix
        self.sync_s = sync_s
        self.lease_s = lease_s
        self.replica = secrets.token_hex(6)
        self.held: dict[str, dict[str, float]] = {}  # account -> lease id -> expiry
        self.reports: dict[str, Report] = {}
        self.releases: list[tuple[str, str]] = []
        self._seq = itertools.count()
        # account -> scope -> the circuit's until (0: closed) as last agreed with Redis.
        self._breaker_seen: dict[str, dict[str, float]] = {}
        self._renewed = 0.0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._acquire: AsyncScript = link.client.register_script(rs.ACQUIRE)
        self._report: AsyncScript = link.client.register_script(rs.REPORT)
        pool.listener = self
        link.on_lost.append(self._lost)
        link.on_recover.append(self._recovered)

    # --- PoolListener: called synchronously by the pool; only notes and wakes ---------

    @property
    def connected(self) -> bool:
        return self.link.connected

    def changed(self, st: AccountState, change: Change) -> None:
        r = self._pending(st.name)
        if change is Change.FAILURE:
            r.errors += 1
            r.times = True
        elif change is Change.SUCCESS:
            r.times = True
        elif change is Change.RESET:
            r.times = r.reset = True
        else:
            r.disable = "set" if change is Change.DISABLE else "clear"
        # A breaker is reported only when it changed here, so a replica that never saw
        # it open cannot close it for everyone by reporting an unrelated 429.
        r.breakers |= self._breakers_changed(st)
        self._poke()

    def _breakers_changed(self, st: AccountState) -> set[str]:
        current = st.open_breakers()
        seen = self._breaker_seen.get(st.name, {})
        return {s for s in seen.keys() | current if current.get(s, 0.0) != seen.get(s, 0.0)}

    def used(self, st: AccountState, prompt: int, completion: int) -> None:
        r = self._pending(st.name)
        r.prompt += prompt
        r.completion += completion
        self._poke()

    def released(self, st: AccountState) -> None:
        leases = self.held.get(st.name)
        if leases:
            lease = next(iter(leases))
            del leases[lease]
            self.releases.append((st.name, lease))
            self._poke()

    def _pending(self, name: str) -> Report:
        r = self.reports.get(name)
        if r is None:
            r = self.reports[name] = Report()
        return r

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # --- the request path: one round trip per attempt -----------------------------------

    async def take(
        self,
        candidates: list[AccountState],
        rotate: bool,
        now: float,
        choose: Callable[[list[AccountState]], AccountState],
        scope: str,
        force: bool = False,
    ) -> tuple[AccountState | None, list[AccountState]]:
        """The candidate that every replica's view allows now, with its slot taken.

        ``rotate``: round robin by the shared cursor over all candidates; otherwise the
        local ``choose`` picks one first. Also returns the candidates offered to Redis;
        when it refused them all (the refusals are applied to the local view) the account
        is None. While Redis is down, ``choose`` decides alone. ``scope``: the request's
        breaker scope; ``force``: a probe, which open circuits and guessed backoffs do
        not refuse (the upstream's word and the operator's limits still do).
        """
        order = candidates if rotate else [choose(candidates)]
        lease = f"{self.replica}:{next(self._seq)}"
        expiry = now + self.lease_s
        args: list[Any] = [
            self.prefix,
            repr(now),
            lease,
            repr(expiry),
            int(rotate),
            RPM_WINDOW,
            scope,
            int(force),
        ]
        for st in order:
            lim = st.limits
            day = repr(last_reset(lim, now))
            args += [st.name, lim.rpm, lim.daily_requests, lim.max_concurrent, day]
        try:
            reply: list[Any] = await self.link.run(
                lambda c: self._acquire(keys=[], args=args, client=c)
            )
        except Unreachable:
            st = choose(candidates) if rotate else order[0]
            r = self._pending(st.name)  # counted in Redis once it is back
            r.requests += 1
            r.day_requests += 1
            self.held.setdefault(st.name, {})[lease] = expiry
            return st, order
        self._refused(reply[1:], now)
        chosen = int(reply[0])
        if not chosen:
            return None, order
        st = order[chosen - 1]
        self.held.setdefault(st.name, {})[lease] = expiry
        return st, order

    def _refused(self, flat: list[str], now: float) -> None:
        """Bring the local view up to what Redis just refused a candidate for."""
        for i in range(0, len(flat), 3):
            name, why, value = flat[i], flat[i + 1], flat[i + 2]
            st = self.pool.states.get(name)
            if st is None:
                continue
            if why == "quota":
                st.quota_until = max(st.quota_until, float(value))
            elif why in ("rate", "backoff"):
                if float(value) >= st.cooldown_until:
                    st.cooldown_until = float(value)
                    st.cooldown_explicit = why == "rate"
            elif why == "breaker":
                scope, _, until = value.partition("=")
                b = st.breaker(scope)
                b.open, b.until = True, float(until)
                self._breaker_seen.setdefault(name, {})[scope] = b.until
            elif why == "disabled":
                st.disabled = st.disabled or value
            elif why == "busy":
                st.others_in_flight = max(0, int(value) - st.in_flight)
            elif why == "rpm":
                st.rpm_full_until = float(value)
            elif why == "daily":
                st.day_start = last_reset(st.limits, now)
                st.day_requests = max(st.day_requests, int(value))

    # --- the background task: reports as they happen, a sync every sync_s --------------

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Unreachable):
            await self.flush()  # the last reports and releases, when Redis is there

    async def _run(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        next_sync = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, next_sync - loop.time()))
            self._wake.clear()
            try:
                await self.flush()
                if loop.time() >= next_sync:
                    next_sync = loop.time() + self.sync_s
                    await self.sync()
            except Unreachable:
                next_sync = loop.time() + self.sync_s  # recovery wakes this task
            except Exception as exc:  # a bug here must not stop sharing for good
                log.error("shared_state_task_failed", error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(self.sync_s)

    async def flush(self) -> None:
        """Send pending reports and releases in one pipeline; keep them when that fails."""
        if not self.reports and not self.releases:
            return
        reports, self.reports = self.reports, {}
        releases, self.releases = self.releases, []
        now = time.time()

        async def send(c: RedisClient) -> None:
            pipe = c.pipeline(transaction=False)
            for name, r in reports.items():
                st = self.pool.states.get(name)
                if st is not None:
                    await self._report(keys=[], args=self._report_args(st, r, now), client=pipe)
            for name, lease in releases:
                pipe.zrem(rs.lease_key(self.prefix, name), lease)
            await pipe.execute()

        try:
            await self.link.run(send, within=self.link.timeout * 4)
        except Unreachable:
            for name, r in reports.items():
                self._pending(name).absorb(r)
            self.releases[:0] = releases
            raise
        for name, r in reports.items():
            st = self.pool.states.get(name)
            if st is not None:
                current = st.open_breakers()
                seen = self._breaker_seen.setdefault(name, {})
                for scope in r.breakers:
                    seen[scope] = current.get(scope, 0.0)

    def _report_args(self, st: AccountState, r: Report, now: float) -> list[Any]:
        disabled = r.disable == "set" and st.disabled is not None
        op = ("set" if disabled else "clear") if r.disable else ""
        current = st.open_breakers()
        breakers: list[Any] = []
        for scope in sorted(r.breakers):
            breakers += [scope, repr(current[scope]) if scope in current else "0"]
        return [
            self.prefix,
            st.name,
            repr(last_reset(st.limits, now)),
            r.requests,
            r.day_requests,
            r.errors,
            r.prompt,
            r.completion,
            (st.last_error or "") if r.errors else "",
            int(r.times),
            repr(st.cooldown_until),
            int(st.cooldown_explicit),
            repr(st.quota_until),
            repr(st.backoff),
            op,
            st.disabled or "",
            int(st.disabled_persist),
            st.disabled_credential or "",
            int(r.reset),
            repr(st.reset_at),
            *breakers,
        ]

    async def sync(self) -> None:
        """Pull every account's shared state into the pool; renew this replica's leases."""
        names = list(self.pool.states)
        now = time.time()
        renew = now - self._renewed > self.lease_s / 3

        async def read(c: RedisClient) -> list[Any]:
            pipe = c.pipeline(transaction=False)
            for name in names:
                rk = rs.rpm_key(self.prefix, name)
                pipe.hgetall(rs.account_key(self.prefix, name))
                pipe.zcount(rs.lease_key(self.prefix, name), now, "+inf")
                pipe.zcount(rk, now - RPM_WINDOW, "+inf")
                pipe.zrangebyscore(rk, now - RPM_WINDOW, "+inf", start=0, num=1, withscores=True)
            if renew:
                for name, leases in self.held.items():
                    if leases:
                        expiry = now + self.lease_s
                        for lease in leases:
                            leases[lease] = expiry
                        pipe.zadd(rs.lease_key(self.prefix, name), dict(leases))
            return list(await pipe.execute())

        results = await self.link.run(read, within=self.link.timeout * 4)
        if renew:
            self._renewed = now
        for i, name in enumerate(names):
            st = self.pool.states.get(name)
            if st is None:  # a reload removed it meanwhile
                continue
            h, leases, in_window, oldest = results[4 * i : 4 * i + 4]
            self._apply(st, parse_hash(h) if h else None, now)
            st.others_in_flight = max(0, int(leases) - len(self.held.get(name, ())))
            full = st.limits.rpm and in_window >= st.limits.rpm and oldest
            st.rpm_full_until = float(oldest[0][1]) + RPM_WINDOW if full else 0.0

    def _apply(self, st: AccountState, shared: dict[str, Any] | None, now: float) -> None:
        # An empty hash is a Redis that lost its data: keep the local view, which the
        # next save merges back in. A pending report is newer than what was read.
        if shared is None or st.name in self.reports:
            return
        reset_at = shared.get("reset_at", 0.0)
        if reset_at > st.reset_at:
            # An operator reset it on another replica: what this one knew is older.
            st.cooldown_until = st.quota_until = st.backoff = 0.0
            st.cooldown_explicit = False
            st.breakers.clear()
            st.reset_at = reset_at
        cooldown = shared.get("cooldown_until", 0.0)
        if cooldown > st.cooldown_until:
            st.cooldown_until, st.cooldown_explicit = cooldown, shared["cooldown_explicit"]
        st.quota_until = max(st.quota_until, shared.get("quota_until", 0.0))
        st.backoff = shared.get("backoff", st.backoff)
        self._apply_breakers(st, shared["breakers"])
        reason = shared.get("disabled")
        if reason != st.disabled:
            st.disabled = reason
            st.disabled_persist = shared["disabled_persist"]
            st.disabled_credential = shared.get("disabled_credential")
        st.last_error = shared.get("last_error", st.last_error)
        for k in ("requests", "errors", "prompt_tokens", "completion_tokens"):
            setattr(st, k, max(getattr(st, k), shared.get(k, 0)))
        day = shared.get("day_start", 0.0)
        if day > st.day_start:
            st.day_start, st.day_requests, st.day_tokens = day, 0, 0
        if day == st.day_start:
            st.day_requests = max(st.day_requests, shared.get("day_requests", 0))
            st.day_tokens = max(st.day_tokens, shared.get("day_tokens", 0))

    def _apply_breakers(self, st: AccountState, shared: dict[str, float]) -> None:
        """Each scope's circuit as Redis has it, where it changed since last agreed."""
        seen = self._breaker_seen.setdefault(st.name, {})
        for scope in seen.keys() | shared:
            until = shared.get(scope, 0.0)
            if until == seen.get(scope, 0.0):
                continue
            seen[scope] = until
            if until:
                b = st.breaker(scope)
                b.open, b.until = True, until
            else:
                st.breakers.pop(scope, None)  # closed elsewhere: its failures start over

    # --- link events ------------------------------------------------------------------

    def _lost(self) -> None:
        # Other replicas' in-flight counts and rpm windows cannot be refreshed now: stale
        # ones would block an account for the whole outage.
        for st in self.pool.states.values():
            st.others_in_flight = 0
            st.rpm_full_until = 0.0

    def _recovered(self) -> None:
        self._renewed = 0.0  # re-register the leases (Redis may have lost them)
        self.pool.changed = True  # and merge the snapshot in again soon
        self._poke()


class SharedPersister(Persister):
    """The Persister (RedisStore snapshots) plus the shared pool's background task."""

    def __init__(self, pool: Pool, store: RedisStore, shared: SharedPool) -> None:
        super().__init__(pool, store, interval=SAVE_S)
        self.shared = shared

    async def restore(self) -> None:
        await self.shared.link.start()
        await super().restore()
        with contextlib.suppress(Unreachable):
            await self.shared.sync()

    def start(self) -> None:
        super().start()
        self.shared.start()

    async def stop(self) -> None:
        await self.shared.stop()
        await super().stop()
