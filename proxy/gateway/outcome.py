"""What happened to one request; its summary log line is made from it."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.pool.policy import Failure


@dataclass(frozen=True, slots=True)
class Attempt:
    """An account the request went to and moved on from: why, by name and in words."""

    account: str
    failure: Failure
    detail: str


@dataclass(slots=True)
class Outcome:
    """What happened to one request; the summary log line is made from it."""

    request_id: str
    route: str
    model: str | None = None
    stream: bool = False
    account: str | None = None
    status: int | None = None
    events: int = 0
    bytes_out: int = 0
    started: float = field(default_factory=time.monotonic)
    first_byte: float | None = None
    error: str | None = None
    client_gone: bool = False
    attempts: list[Attempt] = field(default_factory=list)
    repairs: dict[str, int] = field(default_factory=dict)

    # What each kind of answer records, in one place each.

    def answered(self, status: int, size: int) -> None:
        """A whole answer (not streamed) went out: ``size`` bytes of body."""
        self.status = status
        self.first_byte = time.monotonic()
        self.bytes_out = size

    def failed_early(self, status: int, size: int, error: str) -> None:
        """A stream failed before its first byte: it is answered as an error."""
        self.status = status
        self.error = self.error or error
        self.events = 0
        self.bytes_out = size

    def streamed(self, status: int, events: int, repairs: Mapping[str, int]) -> None:
        """A relayed stream ended (its bytes were counted as they went)."""
        self.status = self.status or status
        self.events = events
        if repairs:
            self.repairs.update(repairs)

    def summary(self) -> dict[str, Any]:
        now = time.monotonic()
        out: dict[str, Any] = {
            "request_id": self.request_id,
            "route": self.route,
            "model": self.model,
            "account": self.account,
            "status": self.status,
            "streamed": self.stream,
            "events": self.events,
            "bytes": self.bytes_out,
            "ttfb_ms": None
            if self.first_byte is None
            else round((self.first_byte - self.started) * 1000, 2),
            "duration_ms": round((now - self.started) * 1000, 2),
        }
        if self.error:
            out["error"] = self.error
        if self.client_gone:
            out["client_gone"] = True
        if self.attempts:
            out["failed_attempts"] = [
                {"account": a.account, "reason": a.detail} for a in self.attempts
            ]
        if self.repairs:
            out["repairs"] = self.repairs
        return out
