"""The account pool: which account takes a request, and what each one's health is.

Pure: no I/O and no clock of its own. Every call that depends on time takes ``now``
(seconds since the epoch), so cooldowns, quota resets and rate windows are tested
without sleeping, and persisted state stays meaningful across restarts. What the pool
knows of each account is in ``model.py``; quota days in ``days.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from proxy.pool.days import _day_start, last_reset, next_reset
from proxy.pool.model import (
    ACCOUNT,
    RATE_BLOCKS,
    AccountState,
    Block,
    Breaker,
    Change,
    Limits,
    PoolListener,
    Strategy,
    Unavailable,
    busy,
)

__all__ = [
    "ACCOUNT",
    "MAX_BACKOFF",
    "RATE_BLOCKS",
    "RPM_WINDOW",
    "AccountState",
    "Block",
    "Breaker",
    "Change",
    "Limits",
    "Pool",
    "PoolListener",
    "Strategy",
    "Unavailable",
    "_day_start",
    "busy",
    "last_reset",
    "next_reset",
]

MAX_BACKOFF = 300.0
RPM_WINDOW = 60.0


class Pool:
    """Routing and health for a set of accounts."""

    def __init__(
        self,
        accounts: Sequence[Limits],
        strategy: Strategy = Strategy.ROUND_ROBIN,
        breaker_threshold: int = 3,
        breaker_cooldown: float = 30.0,
    ) -> None:
        self.strategy = strategy
        self.breaker_threshold = breaker_threshold
        self.breaker_cooldown = breaker_cooldown
        self.states: dict[str, AccountState] = {a.name: AccountState(a) for a in accounts}
        self._order = [a.name for a in accounts]
        self._cursor = 0
        self._current_weight: dict[str, int] = dict.fromkeys(self._order, 0)
        self.changed = False  # persisted state changed since the store last saved it
        self.listener: PoolListener | None = None

    # --- configuration changes -------------------------------------------------

    def replace_accounts(self, accounts: Sequence[Limits]) -> None:
        """New account list (a reload): accounts that stay keep their state."""
        old = self.states
        self.states = {}
        for lim in accounts:
            st = old.get(lim.name)
            if st is None:
                st = AccountState(lim)
            else:
                st.limits = lim
                if not st.disabled_persist and st.disabled is not None:
                    st.disabled = None  # a reload re-enables auth-disabled accounts
                    self._tell(st, Change.ENABLE)
            self.states[lim.name] = st
        self._order = [a.name for a in accounts]
        self._current_weight = {n: self._current_weight.get(n, 0) for n in self._order}

    # --- time helpers ----------------------------------------------------------

    def _roll_day(self, st: AccountState, now: float) -> None:
        start = _day_start(st.limits, now)
        if st.day_start != start:
            st.day_start = start
            st.day_requests = 0
            st.day_tokens = 0

    def _prune(self, st: AccountState, now: float) -> None:
        while st.recent and st.recent[0] <= now - RPM_WINDOW:
            st.recent.popleft()

    # --- eligibility -----------------------------------------------------------
    #
    # Two kinds of block. A *hard* one is the upstream's own word (a disable after 401 or
    # 403, a quota signal, a Retry-After) or a limit the operator set (max_concurrent,
    # rpm, daily_requests): seamline may refuse a request on it. A *soft* one is
    # seamline's own inference (an open circuit, a backoff no Retry-After asked for): it
    # steers requests to other accounts, but when every account serving a model is
    # blocked only so, the request still goes out, as the soonest one's probe. A proxy in
    # front of one account must never be less available than no proxy at all.

    def hard_block(self, st: AccountState, now: float) -> tuple[Block, float | None] | None:
        """The upstream's word or an operator's limit that keeps ``st`` out now."""
        lim = st.limits
        if st.disabled:
            return Block.DISABLED, None
        if st.quota_until > now:
            return Block.QUOTA, st.quota_until
        if st.cooldown_explicit and st.cooldown_until > now:
            return Block.RATE, st.cooldown_until
        if lim.max_concurrent and busy(st) >= lim.max_concurrent:
            return Block.BUSY, None
        if lim.rpm:
            if st.rpm_full_until > now:
                return Block.RPM, st.rpm_full_until
            self._prune(st, now)
            if len(st.recent) >= lim.rpm:
                return Block.RPM, st.recent[0] + RPM_WINDOW
        if lim.daily_requests:
            self._roll_day(st, now)
            if st.day_requests >= lim.daily_requests:
                return Block.DAILY, next_reset(lim, now)
        return None

    def soft_block(
        self, st: AccountState, now: float, scope: str | None = None
    ) -> tuple[Block, float | None] | None:
        """seamline's own inference against ``st`` for ``scope`` (None: any scope)."""
        if st.cooldown_until > now and not st.cooldown_explicit:
            return Block.RATE, st.cooldown_until
        if scope is None:
            found = [b.blocks(now) for b in st.breakers.values()]
            return next((f for f in found if f is not None), None)
        for name in (ACCOUNT, scope):
            b = st.breakers.get(name)
            if b is not None and (blocked := b.blocks(now)) is not None:
                return blocked
        return None

    def block(
        self, st: AccountState, now: float, scope: str | None = None
    ) -> tuple[Block, float | None] | None:
        """Why ``st`` cannot take a request (for ``scope``; None: any) now and when that
        may clear, or None."""
        return self.hard_block(st, now) or self.soft_block(st, now, scope)

    def serving(self, model: str | None) -> list[AccountState]:
        return [self.states[n] for n in self._order if self.states[n].limits.serves(model)]

    def pick(
        self, model: str | None, now: float, exclude: Iterable[str] = (), scope: str = ACCOUNT
    ) -> AccountState | None:
        """The account to try next for ``model``, or None when none can take it."""
        eligible = self.candidates(model, now, exclude, scope)
        return self.choose(eligible) if eligible else None

    def candidates(
        self, model: str | None, now: float, exclude: Iterable[str] = (), scope: str = ACCOUNT
    ) -> list[AccountState]:
        """The accounts of the best priority tier that could take ``model`` now, in order."""
        skip = set(exclude)
        eligible = [
            st
            for st in self.serving(model)
            if st.name not in skip and self.block(st, now, scope) is None
        ]
        if not eligible:
            return []
        tier = min(st.limits.priority for st in eligible)
        return [st for st in eligible if st.limits.priority == tier]

    def choose(self, eligible: list[AccountState]) -> AccountState:
        """One of ``candidates`` by the strategy (advances the round-robin cursor)."""
        if self.strategy is Strategy.FILL_FIRST:
            return eligible[0]
        if self.strategy is Strategy.WEIGHTED:
            # Smooth weighted round robin (as nginx does): fair and deterministic.
            total = 0
            best = eligible[0]
            for st in eligible:
                w = max(st.limits.weight, 0)
                total += w
                self._current_weight[st.name] = self._current_weight.get(st.name, 0) + w
                if self._current_weight[st.name] > self._current_weight[best.name]:
                    best = st
            self._current_weight[best.name] -= total
            return best
        start = self._cursor % len(eligible)
        self._cursor += 1
        rotated = eligible[start:] + eligible[:start]
        if self.strategy is Strategy.LEAST_BUSY:
            return min(rotated, key=busy)
        return rotated[0]

    def fallback(
        self, model: str | None, now: float, exclude: Iterable[str] = (), scope: str = ACCOUNT
    ) -> AccountState | None:
        """When no candidate is left: the account blocked only by seamline's inference that
        recovers soonest (lower tier first on a tie), to send the request to as its
        probe; None when every one is blocked by the upstream's word or a limit."""
        skip = set(exclude)
        best: tuple[float, int, int] | None = None
        found: AccountState | None = None
        for i, st in enumerate(self.serving(model)):
            if st.name in skip or self.hard_block(st, now) is not None:
                continue
            soft = self.soft_block(st, now, scope)
            key = (now if soft is None or soft[1] is None else soft[1], st.limits.priority, i)
            if best is None or key < best:
                best, found = key, st
        return found

    def ready(self, now: float) -> list[str]:
        """The accounts that could take a request now, under the rule above."""
        return [name for name, st in self.states.items() if self.hard_block(st, now) is None]

    def unavailable(self, model: str | None, now: float) -> Unavailable:
        """The answer when neither ``pick`` nor ``fallback`` found anybody."""
        serving = self.serving(model)
        if not serving:
            return Unavailable(404, f"no account serves the model {model!r}", None)
        rate_times: list[float] = []
        other_times: list[float] = []
        rate_limited = False
        for st in serving:
            blocked = self.hard_block(st, now)
            if blocked is None:
                continue
            kind, until = blocked
            if kind in RATE_BLOCKS:
                rate_limited = True
                if until is not None:
                    rate_times.append(until)
            elif until is not None:
                other_times.append(until)
        if rate_limited:
            retry = min(rate_times) - now if rate_times else None
            return Unavailable(429, "all accounts are rate limited or out of quota", retry)
        retry = min(other_times) - now if other_times else None
        return Unavailable(503, "no upstream account is available right now", retry)

    # --- request lifecycle -----------------------------------------------------

    def acquire(self, st: AccountState, now: float, scope: str = ACCOUNT) -> None:
        """Count a request as started on ``st``."""
        st.in_flight += 1
        st.requests += 1
        if st.limits.rpm:
            st.recent.append(now)
        self._roll_day(st, now)
        st.day_requests += 1
        for name in (ACCOUNT, scope):
            b = st.breakers.get(name)
            if b is not None and b.open and b.until <= now:
                b.probing = True
        self.changed = True

    def release(self, st: AccountState) -> None:
        st.in_flight = max(0, st.in_flight - 1)
        if self.listener is not None:
            self.listener.released(st)
        if st.in_flight == 0:
            # A probe that ended without a verdict (a client error, a 429, its client
            # went away): the next request probes again, rather than half-open forever.
            for b in st.breakers.values():
                b.probing = False

    def succeeded(self, st: AccountState, scope: str = ACCOUNT) -> None:
        """An answer came: the backoff, and the breakers of the account and of ``scope``,
        are reset (a success on one route says nothing of another's)."""
        news = bool(st.backoff)
        for name in {ACCOUNT, scope}:
            b = st.breakers.pop(name, None)
            news = news or (b is not None and (b.failures > 0 or b.open))
        if news:
            self._tell(st, Change.SUCCESS)  # only a reset is news; most successes are not
        st.backoff = 0.0

    def answered(self, st: AccountState) -> None:
        """The upstream answered (not with a 429): the rate-limit backoff starts over."""
        if st.backoff:
            st.backoff = 0.0
            self._tell(st, Change.SUCCESS)

    def rate_limited(self, st: AccountState, now: float, retry_after: float | None) -> None:
        """A 429 with no quota signal: cool down for Retry-After, else back off (which is
        seamline's guess, so it only steers)."""
        st.backoff = min(MAX_BACKOFF, st.backoff * 2 if st.backoff else 1.0)
        if retry_after is not None:
            st.cooldown_until, st.cooldown_explicit = now + retry_after, True
        elif not (st.cooldown_explicit and st.cooldown_until > now):
            # A guess never shortens the upstream's own word.
            st.cooldown_until, st.cooldown_explicit = now + st.backoff, False
        self._failed(st, "rate limited (429)")

    def quota_exhausted(self, st: AccountState, now: float, retry_after: float | None) -> None:
        """Out until the next quota reset, or Retry-After when that is later."""
        until = next_reset(st.limits, now)
        if retry_after is not None:
            until = max(until, now + retry_after)
        st.quota_until = until
        self._failed(st, "quota exhausted")

    def disable(
        self, st: AccountState, reason: str, persist: bool = False, credential: str | None = None
    ) -> bool:
        """Take ``st`` out of rotation; True when it was not disabled before.

        ``credential`` is a fingerprint (never the secret) of what was refused.
        """
        first = st.disabled is None
        st.disabled = reason
        st.disabled_persist = persist
        st.disabled_credential = credential
        self._failed(st, reason)
        self._tell(st, Change.DISABLE)
        return first

    def reset(self, st: AccountState, now: float) -> None:
        """An operator's word: cooldown, backoff, every circuit and quota exhaustion
        cleared at ``now`` (the account's quota reset early, a provider is back)."""
        st.cooldown_until = st.quota_until = st.backoff = 0.0
        st.cooldown_explicit = False
        st.breakers.clear()
        st.reset_at = now
        self.changed = True
        self._tell(st, Change.RESET)

    def enable(self, st: AccountState) -> None:
        st.disabled = None
        st.disabled_persist = False
        st.disabled_credential = None
        self.changed = True
        self._tell(st, Change.ENABLE)

    def failed(
        self,
        st: AccountState,
        now: float,
        reason: str,
        scope: str = ACCOUNT,
        fingerprint: int | None = None,
    ) -> None:
        """5xx, connection error or timeout: counts towards the circuit breaker of
        ``scope`` (ACCOUNT: the account could not be reached at all), once per distinct
        request (``fingerprint``; None: always)."""
        b = st.breaker(scope)
        if fingerprint is None or fingerprint not in b.seen:
            b.failures += 1
            if fingerprint is not None:
                b.seen = (*b.seen, fingerprint)[-self.breaker_threshold :]
            if b.probing or b.failures >= self.breaker_threshold:
                b.open = True
                b.until = now + self.breaker_cooldown
        elif b.probing:
            b.open = True  # a probe failed, whatever it was: open again
            b.until = now + self.breaker_cooldown
        b.probing = False
        self._failed(st, reason)

    def _failed(self, st: AccountState, reason: str) -> None:
        st.errors += 1
        st.last_error = reason
        self.changed = True
        self._tell(st, Change.FAILURE)

    def _tell(self, st: AccountState, change: Change) -> None:
        if self.listener is not None:
            self.listener.changed(st, change)

    def add_usage(self, st: AccountState, prompt: int, completion: int, now: float) -> None:
        self._roll_day(st, now)
        st.prompt_tokens += prompt
        st.completion_tokens += completion
        st.day_tokens += prompt + completion
        self.changed = True
        if self.listener is not None:
            self.listener.used(st, prompt, completion)

    # --- views -----------------------------------------------------------------

    def snapshot(self, now: float) -> list[dict[str, Any]]:
        """Per account state for the admin page and status table; never a secret."""
        out = []
        for name in self._order:
            st = self.states[name]
            self._roll_day(st, now)
            blocked = self.block(st, now)
            circuits = st.open_breakers()
            out.append(
                {
                    "name": name,
                    "state": "available" if blocked is None else blocked[0].value,
                    "cooling_down_until": _iso(st.cooldown_until, now),
                    "quota_exhausted_until": _iso(st.quota_until, now),
                    "circuit_open_until": _iso(max(circuits.values(), default=0.0), now),
                    # Per scope (ACCOUNT, or a route); None once half-open.
                    "circuits_open": {s: _iso(u, now) for s, u in sorted(circuits.items())},
                    "disabled": st.disabled,
                    "in_flight": busy(st),
                    "requests_today": st.day_requests,
                    "tokens_today": st.day_tokens,
                    "requests": st.requests,
                    "errors": st.errors,
                    "prompt_tokens": st.prompt_tokens,
                    "completion_tokens": st.completion_tokens,
                    "last_error": st.last_error,
                }
            )
        return out


def _iso(ts: float, now: float) -> str | None:
    if ts <= now:
        return None
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")
