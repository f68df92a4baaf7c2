"""Admission: draining, requests in flight, client rate windows (process-wide)."""

from __future__ import annotations

import asyncio
import hmac
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from proxy.config import ServerConfig
from proxy.errors import BodyTooLarge, NoAccount, RateLimited
from proxy.gateway.outcome import Outcome


@dataclass
class Gate:
    """Process-wide admission state: draining, requests in flight, client rate windows.

    The limits are read from ``server()`` for each request, so a reload applies them.
    """

    server: Callable[[], ServerConfig] = ServerConfig
    # server.max_concurrent when the config leaves it out: what the open-file limit
    # allows at start (each stream holds two sockets).
    auto_concurrent: int = 0
    draining: bool = False
    in_flight: int = 0
    windows: dict[str, deque[float]] = field(default_factory=dict)
    on_done: Callable[[Outcome, str], None] | None = None
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def enter(self) -> None:
        self.in_flight += 1
        self.idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if not self.in_flight:
            self.idle.set()

    async def wait_idle(self, seconds: float) -> bool:
        """Wait until no request is in flight; False when ``seconds`` passed first."""
        if not self.in_flight:
            return True
        try:
            await asyncio.wait_for(self.idle.wait(), seconds)
        except TimeoutError:
            return False
        return True

    def admit(self, content_length: int | None) -> None:
        """Raise unless a request (of ``content_length``, when it said) may go on now."""
        s = self.server()
        if self.draining:
            raise NoAccount("seamline is shutting down", retry_after=1)
        limit = self.auto_concurrent if s.max_concurrent is None else s.max_concurrent
        if limit and self.in_flight >= limit:
            raise NoAccount("too many concurrent requests", retry_after=1)
        if content_length is not None and content_length > s.max_body_bytes:
            # Refused before a byte of it is read.
            raise BodyTooLarge(f"request body exceeds {s.max_body_bytes} bytes")

    def rate(self, key: str) -> None:
        """429 once the client ``key`` has made client_rpm requests in the last minute."""
        client_rpm = self.server().client_rpm
        if not client_rpm:
            return
        now = time.monotonic()
        if len(self.windows) > 10_000:
            self.windows = {k: w for k, w in self.windows.items() if w and w[-1] > now - 60}
        # Keyed by a digest so that no client key is kept in memory as such.
        window = self.windows.setdefault(_digest(key), deque())
        while window and window[0] <= now - 60:
            window.popleft()
        if len(window) >= client_rpm:
            raise RateLimited(
                "rate limit for this API key reached", retry_after=window[0] + 60 - now
            )
        window.append(now)


def _digest(key: str) -> str:
    return hmac.new(b"seamline-client", key.encode(), "sha256").hexdigest()
