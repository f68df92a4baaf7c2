"""What an upstream answer means for an account: pure classification helpers."""

from __future__ import annotations

import re
from datetime import UTC
from email.utils import parsedate_to_datetime
from enum import StrEnum


class Verdict(StrEnum):
    """What an upstream answer means for the account, and whether to fail over."""

    OK = "ok"
    CLIENT_ERROR = "client_error"  # the request's fault: goes back to the client
    RATE = "rate_limited"
    QUOTA = "quota_exhausted"
    AUTH = "auth_failed"
    FAILURE = "upstream_failure"


FAILOVER = frozenset({Verdict.RATE, Verdict.QUOTA, Verdict.AUTH, Verdict.FAILURE})
_QUOTA_SIGNS = re.compile(
    rb"insufficient_quota|quota[ _]exceeded|exceeded[^\"]{0,40}quota|"
    rb"Throttling\.AllocationQuota|AllocationQuota\.",
    re.IGNORECASE,
)


def classify(status: int, body: bytes) -> Verdict:
    """Classify an upstream status (and error body) for failover and account health."""
    if status < 400:
        return Verdict.OK
    if status in (429, 403) and _QUOTA_SIGNS.search(body):
        return Verdict.QUOTA
    if status == 429:
        return Verdict.RATE
    if status in (401, 403):
        return Verdict.AUTH
    if status == 408 or status >= 500:
        return Verdict.FAILURE
    return Verdict.CLIENT_ERROR


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Retry-After as seconds from ``now``: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)
