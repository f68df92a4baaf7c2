"""The failover policy: what one upstream answer means, as data. Pure.

The routing loop makes the calls; this decides, from what came back and what the
attempt may still do, what happens next: the answer goes to the client, the same
account is asked again (a refreshed token, or without the ``stream_options`` seamline
added), or the next account takes the request, with what the pool learns.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from proxy.pool.health import FAILOVER, Verdict, classify


class Next(StrEnum):
    """What the routing loop does after an answer."""

    RETURN = "return"  # the client's own error: it gets the answer as it is
    REFRESH = "refresh"  # refresh the OAuth token, then ask the same account again
    WITHOUT_OPTIONS = "without_options"  # the same account, without seamline's option
    FAIL_OVER = "fail_over"  # the next account takes the request


class Effect(StrEnum):
    """What the pool learns of the account."""

    NONE = "none"
    COOLDOWN = "cooldown"  # rate limited: for its Retry-After, else a guessed backoff
    QUOTA = "quota"  # out of quota until its reset
    DISABLE = "disable"  # its credentials were refused
    FAILURE = "failure"  # counts towards the circuit of the request's scope


class Failure(StrEnum):
    """Why an attempt moved on: one low-cardinality name for logs and metrics."""

    RATE = "rate_limited"
    QUOTA = "quota_exhausted"
    AUTH = "auth_failed"
    UPSTREAM = "upstream_failure"
    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    PROTOCOL = "upstream_error"
    OAUTH = "oauth"


@dataclass(frozen=True, slots=True)
class Decision:
    """``keep``: on FAIL_OVER, the answer is the client's should every account fail so
    (a 5xx body, a 429 with no Retry-After to say when); a quota or a refused key is
    better told by seamline."""

    next: Next
    effect: Effect = Effect.NONE
    keep: bool = False
    failure: Failure | None = None


_BY_VERDICT = {
    Verdict.QUOTA: Decision(Next.FAIL_OVER, Effect.QUOTA, False, Failure.QUOTA),
    Verdict.RATE: Decision(Next.FAIL_OVER, Effect.COOLDOWN, True, Failure.RATE),
    Verdict.AUTH: Decision(Next.FAIL_OVER, Effect.DISABLE, False, Failure.AUTH),
    Verdict.FAILURE: Decision(Next.FAIL_OVER, Effect.FAILURE, True, Failure.UPSTREAM),
}
_RETURN = Decision(Next.RETURN)


def names_stream_options(body: bytes) -> bool:
    """An error body that is about ``stream_options`` (pydantic's "Extra inputs are not
    permitted" names the field it refused)."""
    low = body.lower()
    return b"stream_options" in low or b"include_usage" in low


def decide(
    status: int, body: bytes, *, can_refresh: bool = False, can_drop_options: bool = False
) -> Decision:
    """What an upstream's error answer (``status`` >= 400, its ``body``) means.

    ``can_refresh``: an OAuth account whose token was not refreshed yet for this
    attempt; ``can_drop_options``: seamline added ``stream_options`` to the body.
    """
    verdict = classify(status, body)
    if verdict is Verdict.AUTH and can_refresh:
        return Decision(Next.REFRESH)
    if can_drop_options and status in (400, 422) and names_stream_options(body):
        return Decision(Next.WITHOUT_OPTIONS)
    if verdict not in FAILOVER:
        return _RETURN
    return _BY_VERDICT[verdict]
