"""What the pool knows of an account: its limits, its state, its circuits. Data only."""

from __future__ import annotations

import fnmatch
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol


class Strategy(StrEnum):
    ROUND_ROBIN = "round_robin"
    LEAST_BUSY = "least_busy"
    FILL_FIRST = "fill_first"
    WEIGHTED = "weighted"


class Block(StrEnum):
    """Why an account cannot take a request right now."""

    DISABLED = "disabled"
    QUOTA = "quota_exhausted"
    RATE = "rate_limited"
    BREAKER = "circuit_open"
    BUSY = "max_concurrent"
    RPM = "rpm_limit"
    DAILY = "daily_limit"


# Blocks that clear by waiting, and so deserve a 429 with Retry-After.
RATE_BLOCKS = frozenset({Block.QUOTA, Block.RATE, Block.RPM, Block.DAILY})

# The breaker scope of failures that concern the whole account (it could not be reached
# at all); other scopes are routes, so that an upstream failing one route (one it does
# not serve, say) still takes the others.
ACCOUNT = "*"


class Change(StrEnum):
    """What happened to an account's health, as told to a PoolListener."""

    FAILURE = "failure"  # an error: cooldown, quota, breaker or a disable may follow
    SUCCESS = "success"  # backoff and breaker were reset
    DISABLE = "disable"
    ENABLE = "enable"
    RESET = "reset"  # an operator cleared cooldown, backoff, circuits and quota


class PoolListener(Protocol):
    """Hears what the pool decided, to share it (Redis); must never block or raise."""

    @property
    def connected(self) -> bool: ...

    def changed(self, st: AccountState, change: Change) -> None: ...

    def used(self, st: AccountState, prompt: int, completion: int) -> None: ...

    def released(self, st: AccountState) -> None: ...


@dataclass(frozen=True, slots=True)
class Limits:
    """The parts of an account's config the pool needs."""

    name: str
    models: tuple[str, ...] = ()
    priority: int = 0
    weight: int = 1
    max_concurrent: int = 0
    rpm: int = 0
    daily_requests: int = 0
    reset_hour: int = 0
    reset_minute: int = 0
    reset_tz: str = "UTC"

    def serves(self, model: str | None) -> bool:
        if not self.models or model is None:
            return True
        return any(fnmatch.fnmatchcase(model, pat) for pat in self.models)


@dataclass(slots=True)
class Breaker:
    """The circuit breaker of one scope of an account (the account, or one route).

    ``seen`` holds the fingerprints of the requests this run of failures counted: the
    same request failing again (a client's retries of a prompt the upstream chokes on)
    is one failure of that request, not evidence that the account is down.
    """

    failures: int = 0
    seen: tuple[int, ...] = ()
    open: bool = False
    until: float = 0.0
    probing: bool = False

    def blocks(self, now: float) -> tuple[Block, float | None] | None:
        if not self.open:
            return None
        if self.until > now:
            return Block.BREAKER, self.until
        if self.probing:  # half-open: one probe at a time decides
            return Block.BREAKER, None
        return None


@dataclass(slots=True)
class AccountState:
    """Everything the pool knows about one account; the persisted part is in to_dict."""

    limits: Limits
    cooldown_until: float = 0.0
    # The cooldown is the upstream's own word (a Retry-After), not seamline's backoff.
    cooldown_explicit: bool = False
    backoff: float = 0.0
    quota_until: float = 0.0
    disabled: str | None = None
    disabled_persist: bool = False  # survives a restart (an OAuth refresh rejected)
    # A fingerprint of the credential that was refused, so a new login can be told apart.
    disabled_credential: str | None = None
    # Per scope (ACCOUNT, or a route): consecutive 5xx, connection errors, timeouts.
    breakers: dict[str, Breaker] = field(default_factory=dict)
    in_flight: int = 0
    # Requests other replicas have in flight here, and until when the shared rpm window
    # is full, as last seen in the shared state; both stay 0 for a single process.
    others_in_flight: int = 0
    rpm_full_until: float = 0.0
    # Until then the account gets no ``stream_options`` (it refused them once).
    plain_until: float = 0.0
    # When an operator last reset the account: shared state older than that is stale.
    reset_at: float = 0.0
    recent: deque[float] = field(default_factory=deque)
    day_start: float = 0.0
    day_requests: int = 0
    day_tokens: int = 0
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    last_error: str | None = None

    @property
    def name(self) -> str:
        return self.limits.name

    def breaker(self, scope: str) -> Breaker:
        b = self.breakers.get(scope)
        if b is None:
            b = self.breakers[scope] = Breaker()
        return b

    def open_breakers(self) -> dict[str, float]:
        """Scope -> until, for every open circuit (for views and sharing)."""
        return {scope: b.until for scope, b in self.breakers.items() if b.open}

    _PERSISTED = (
        "reset_at",
        "cooldown_until",
        "cooldown_explicit",
        "backoff",
        "quota_until",
        "day_start",
        "day_requests",
        "day_tokens",
        "requests",
        "errors",
        "prompt_tokens",
        "completion_tokens",
        "last_error",
    )

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self._PERSISTED}
        if self.disabled_persist:
            out["disabled"] = self.disabled
            out["disabled_credential"] = self.disabled_credential
        return out

    def restore(self, saved: dict[str, Any]) -> None:
        for k in self._PERSISTED:
            value = saved.get(k)
            if value is None:
                continue
            current = getattr(self, k)
            kind = str if current is None else type(current)
            setattr(self, k, kind(value))
        if saved.get("disabled"):
            self.disabled = str(saved["disabled"])
            self.disabled_persist = True
            credential = saved.get("disabled_credential")
            self.disabled_credential = None if credential is None else str(credential)


@dataclass(frozen=True, slots=True)
class Unavailable:
    """Why no account can take a request: the answer's status and Retry-After."""

    status: int
    message: str
    retry_after: float | None


def busy(st: AccountState) -> int:
    """Requests in flight on ``st`` here and, as last seen, on other replicas."""
    return st.in_flight + st.others_in_flight
