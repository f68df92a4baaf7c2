"""Requests and tokens per account and per client key, today and since start.

This replica's own tally, booked once per request from its Outcome when it ends (as the
metrics are), never on the streaming path. "Today" is the UTC day; the pool's own
counters (``requests_today`` in /admin/accounts) follow each account's quota day and,
with Redis, every replica.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from proxy.gateway.outcome import Outcome

DAY = 86400.0
# Without server.api_keys any key is accepted: past this many, the rest share one row,
# so that made-up keys cannot grow memory.
MAX_CLIENTS = 1000
OTHER_CLIENTS = "other"


@dataclass(slots=True)
class Tally:
    requests: int = 0
    errors: int = 0  # answered with a status of 400 or more, or cut
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, outcome: Outcome) -> None:
        self.requests += 1
        self.errors += (outcome.status or 0) >= 400 or outcome.error is not None
        self.prompt_tokens += outcome.prompt_tokens
        self.completion_tokens += outcome.completion_tokens


@dataclass(slots=True)
class Period:
    """The tallies of one span of time, by account and by client key fingerprint."""

    start: float
    accounts: dict[str, Tally] = field(default_factory=dict)
    clients: dict[str, Tally] = field(default_factory=dict)

    def add(self, outcome: Outcome) -> None:
        if outcome.account is not None:
            _tally(self.accounts, outcome.account).add(outcome)
        client = outcome.client
        if client is not None:
            if client not in self.clients and len(self.clients) >= MAX_CLIENTS:
                client = OTHER_CLIENTS
            _tally(self.clients, client).add(outcome)


def _tally(tallies: dict[str, Tally], key: str) -> Tally:
    found = tallies.get(key)
    if found is None:
        found = tallies[key] = Tally()
    return found


def day_start(now: float) -> float:
    return now - now % DAY


class Usage:
    """This replica's usage since it started, and since the UTC day began."""

    def __init__(self, now: float) -> None:
        self.since_start = Period(now)
        self.today = Period(day_start(now))

    def record(self, outcome: Outcome, now: float) -> None:
        """Book one finished request (one that passed the client checks, or reached an
        account)."""
        if outcome.client is None and outcome.account is None:
            return
        self._roll(now)
        self.since_start.add(outcome)
        self.today.add(outcome)

    def _roll(self, now: float) -> None:
        start = day_start(now)
        if start != self.today.start:
            self.today = Period(start)

    def view(self, accounts: list[str], now: float) -> dict[str, Any]:
        """The JSON of /admin/usage: every configured account (in config order, then any
        a reload removed), and every client key seen, busiest first."""
        self._roll(now)
        total, today = self.since_start, self.today
        names = accounts + sorted(set(total.accounts) - set(accounts))
        clients = sorted(total.clients, key=lambda c: (-total.clients[c].requests, c))
        return {
            "since": _iso(total.start),
            "today_since": _iso(today.start),
            "accounts": [_row("name", n, today.accounts, total.accounts) for n in names],
            "clients": [_row("client", c, today.clients, total.clients) for c in clients],
        }


def _row(label: str, key: str, today: dict[str, Tally], total: dict[str, Tally]) -> dict[str, Any]:
    return {
        label: key,
        "today": asdict(today.get(key, Tally())),
        "since_start": asdict(total.get(key, Tally())),
    }


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")
