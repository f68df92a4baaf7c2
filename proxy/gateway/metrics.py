"""Prometheus metrics: booked once per request from its Outcome, never per event.

Account gauges and token counters are read from the pool when scraped, so the
request path does no extra work for them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from proxy.gateway.outcome import Outcome
from proxy.pool.accounts import Block, Pool

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_STATES = ["available", *(b.value for b in Block)]


class _PoolCollector(Collector):
    def __init__(self, pool: Callable[[], Pool]) -> None:
        self._pool = pool

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        pool = self._pool()
        now = time.time()
        state = GaugeMetricFamily(
            "seamline_account_state",
            "1 for the account's current state",
            labels=["account", "state"],
        )
        cooldown = GaugeMetricFamily(
            "seamline_account_cooldown_seconds",
            "Seconds until the account may be used again (0 when available)",
            labels=["account"],
        )
        in_flight = GaugeMetricFamily(
            "seamline_account_in_flight", "Requests in flight per account", labels=["account"]
        )
        tokens = CounterMetricFamily(
            "seamline_tokens", "Tokens used per account", labels=["account", "kind"]
        )
        for name, st in pool.states.items():
            blocked = pool.block(st, now)
            current = "available" if blocked is None else blocked[0].value
            for s in _STATES:
                state.add_metric([name, s], 1.0 if s == current else 0.0)
            until = blocked[1] if blocked is not None and blocked[1] is not None else now
            cooldown.add_metric([name], max(0.0, until - now))
            in_flight.add_metric([name], st.in_flight)
            tokens.add_metric([name, "prompt"], st.prompt_tokens)
            tokens.add_metric([name, "completion"], st.completion_tokens)
        yield from (state, cooldown, in_flight, tokens)
        if pool.listener is not None:
            yield GaugeMetricFamily(
                "seamline_shared_state_connected",
                "1 while the shared state (Redis) is reachable; 0 while deciding locally",
                value=1.0 if pool.listener.connected else 0.0,
            )


class Metrics:
    """One registry per application (tests run several in one process)."""

    def __init__(self, pool: Callable[[], Pool]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "seamline_requests", "Requests answered", ["route", "status", "account"], registry=r
        )
        self.events = Counter("seamline_stream_events", "Data events streamed", registry=r)
        self.bytes = Counter("seamline_stream_bytes", "Bytes streamed to clients", registry=r)
        self.repairs = Counter("seamline_repairs", "Stream repairs applied", ["kind"], registry=r)
        self.failovers = Counter(
            "seamline_failovers", "Failed attempts that moved on", ["reason"], registry=r
        )
        self.ttfb = Histogram(
            "seamline_time_to_first_byte_seconds",
            "Time to first byte to the client",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "seamline_request_duration_seconds",
            "Whole request duration",
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("seamline_streams_in_flight", "Streams being relayed", registry=r)
        r.register(_PoolCollector(pool))

    def record(self, outcome: Outcome, route: str) -> None:
        self.requests.labels(route, str(outcome.status), outcome.account or "").inc()
        if outcome.stream:
            self.events.inc(outcome.events)
            self.bytes.inc(outcome.bytes_out)
        for kind, n in outcome.repairs.items():
            self.repairs.labels(kind).inc(n)
        for attempt in outcome.attempts:
            self.failovers.labels(attempt.failure.value).inc()
        now = time.monotonic()
        if outcome.first_byte is not None:
            self.ttfb.observe(outcome.first_byte - outcome.started)
        self.duration.observe(now - outcome.started)

    def render(self) -> bytes:
        return generate_latest(self.registry)
