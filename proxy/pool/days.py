"""Quota days: when an account's daily quota last reset and resets next. Pure."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from proxy.pool.model import Limits

# (time zone, hour, minute) -> the quota day holding the latest ``now`` asked about.
_DAYS: dict[tuple[str, int, int], tuple[float, float]] = {}


def _day_start(lim: Limits, now: float) -> float:
    """``last_reset``, remembered for the day it starts: the time-zone arithmetic is
    too slow to run several times per request."""
    key = (lim.reset_tz, lim.reset_hour, lim.reset_minute)
    day = _DAYS.get(key)
    if day is None or not day[0] <= now < day[1]:
        day = (last_reset(lim, now), next_reset(lim, now))
        _DAYS[key] = day
    return day[0]


def last_reset(lim: Limits, now: float) -> float:
    """The most recent quota reset at or before ``now``, in epoch seconds."""
    tz = ZoneInfo(lim.reset_tz)
    local = datetime.fromtimestamp(now, tz)
    reset = local.replace(hour=lim.reset_hour, minute=lim.reset_minute, second=0, microsecond=0)
    if reset.timestamp() > now:
        reset = (reset.replace(tzinfo=None) - timedelta(days=1)).replace(tzinfo=tz)
    return reset.timestamp()


def next_reset(lim: Limits, now: float) -> float:
    """The next quota reset after ``now``, in epoch seconds."""
    tz = ZoneInfo(lim.reset_tz)
    last = datetime.fromtimestamp(last_reset(lim, now), tz)
    nxt = (last.replace(tzinfo=None) + timedelta(days=1)).replace(tzinfo=tz)
    return nxt.timestamp()
