"""The pure account pool: routing, health and limits, with an injected clock."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from proxy.pool.accounts import (
    Block,
    Limits,
    Pool,
    Strategy,
    Unavailable,
    _day_start,
    last_reset,
    next_reset,
)
from proxy.pool.health import Verdict, classify, parse_retry_after

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC).timestamp()


def pool(*limits: Limits, strategy: Strategy = Strategy.ROUND_ROBIN) -> Pool:
    return Pool(list(limits), strategy=strategy, breaker_threshold=3, breaker_cooldown=30)


def names(n: int) -> list[Limits]:
    return [Limits(name=f"a{i}") for i in range(n)]


def test_round_robin_is_fair_over_hundreds_of_requests() -> None:
    p = pool(*names(3))
    counts = Counter(p.pick("m", T0).name for _ in range(300))  # type: ignore[union-attr]
    assert counts == {"a0": 100, "a1": 100, "a2": 100}


def test_fill_first_stays_until_ineligible() -> None:
    p = pool(*names(3), strategy=Strategy.FILL_FIRST)
    assert {p.pick("m", T0).name for _ in range(10)} == {"a0"}  # type: ignore[union-attr]
    p.rate_limited(p.states["a0"], T0, None)
    assert p.pick("m", T0).name == "a1"  # type: ignore[union-attr]


def test_weighted_follows_weights_exactly() -> None:
    p = pool(Limits("a", weight=3), Limits("b", weight=1), strategy=Strategy.WEIGHTED)
    counts = Counter(p.pick("m", T0).name for _ in range(400))  # type: ignore[union-attr]
    assert counts == {"a": 300, "b": 100}


def test_least_busy_prefers_fewest_in_flight() -> None:
    p = pool(*names(3), strategy=Strategy.LEAST_BUSY)
    p.acquire(p.states["a0"], T0)
    p.acquire(p.states["a1"], T0)
    assert p.pick("m", T0).name == "a2"  # type: ignore[union-attr]


def test_lower_priority_tier_used_only_when_higher_is_out() -> None:
    p = pool(Limits("main", priority=0), Limits("backup", priority=1))
    assert {p.pick("m", T0).name for _ in range(5)} == {"main"}  # type: ignore[union-attr]
    p.quota_exhausted(p.states["main"], T0, None)
    assert p.pick("m", T0).name == "backup"  # type: ignore[union-attr]


def test_models_route_only_to_accounts_that_serve_them() -> None:
    p = pool(Limits("qwen", models=("qwen-*",)), Limits("ds", models=("deepseek-chat",)))
    assert p.pick("qwen-max", T0).name == "qwen"  # type: ignore[union-attr]
    assert p.pick("deepseek-chat", T0).name == "ds"  # type: ignore[union-attr]
    assert p.pick("gpt-4o", T0) is None
    assert p.unavailable("gpt-4o", T0).status == 404


def test_exclude_skips_tried_accounts() -> None:
    p = pool(*names(2))
    assert p.pick("m", T0, exclude={"a0"}).name == "a1"  # type: ignore[union-attr]
    assert p.pick("m", T0, exclude={"a0", "a1"}) is None


def test_429_backoff_doubles_from_one_second_to_five_minutes_and_resets() -> None:
    p = pool(Limits("a"))
    st = p.states["a"]
    waits = []
    for _ in range(12):
        p.rate_limited(st, T0, None)
        waits.append(st.cooldown_until - T0)
    assert waits[:5] == [1, 2, 4, 8, 16]
    assert waits[-1] == 300
    assert p.pick("m", T0 + 299) is None
    assert p.pick("m", T0 + 300) is st
    p.succeeded(st)
    p.rate_limited(st, T0, None)
    assert st.cooldown_until - T0 == 1


def test_retry_after_sets_the_cooldown() -> None:
    p = pool(Limits("a"))
    p.rate_limited(p.states["a"], T0, 42)
    assert p.pick("m", T0 + 41.9) is None
    u = p.unavailable("m", T0)
    assert (u.status, u.retry_after) == (429, 42)


def test_quota_exhausted_until_next_reset_or_later_retry_after() -> None:
    p = pool(Limits("a", reset_hour=0, reset_tz="UTC"))
    st = p.states["a"]
    p.quota_exhausted(st, T0, None)
    midnight = datetime(2026, 11, 23, tzinfo=UTC).timestamp()
    assert st.quota_until == midnight
    p.quota_exhausted(st, T0, 2 * 86400)
    assert st.quota_until == T0 + 2 * 86400
    assert p.block(st, T0) == (Block.QUOTA, T0 + 2 * 86400)


def test_quota_reset_honours_time_zone() -> None:
    lim = Limits("a", reset_hour=9, reset_minute=30, reset_tz="Asia/Shanghai")
    # 12:00 UTC is 20:00 in Shanghai: the last reset was 01:30 UTC today.
    assert last_reset(lim, T0) == datetime(2026, 11, 22, 1, 30, tzinfo=UTC).timestamp()
    assert next_reset(lim, T0) == datetime(2026, 11, 23, 1, 30, tzinfo=UTC).timestamp()


def test_circuit_breaker_opens_then_one_probe_decides() -> None:
    p = pool(Limits("a"), Limits("b"))
    a = p.states["a"]
    for _ in range(3):
        p.failed(a, T0, "502")
    assert p.block(a, T0) == (Block.BREAKER, T0 + 30)
    assert p.pick("m", T0 + 29, exclude={"b"}) is None
    probe = p.pick("m", T0 + 30, exclude={"b"})
    assert probe is a
    p.acquire(a, T0 + 30)
    assert p.pick("m", T0 + 30, exclude={"b"}) is None  # one probe at a time
    p.failed(a, T0 + 31, "502")  # the probe failed: open again
    assert p.block(a, T0 + 31) == (Block.BREAKER, T0 + 61)
    p.release(a)
    p.acquire(a, T0 + 61)
    p.succeeded(a)
    p.release(a)
    assert p.block(a, T0 + 61) is None


def test_local_limits_make_an_account_ineligible() -> None:
    p = pool(Limits("a", max_concurrent=1, rpm=2, daily_requests=3))
    a = p.states["a"]
    p.acquire(a, T0)
    assert p.block(a, T0) == (Block.BUSY, None)
    p.release(a)
    p.acquire(a, T0 + 1)
    p.release(a)
    assert p.block(a, T0 + 2) == (Block.RPM, T0 + 60)
    assert p.block(a, T0 + 61) is None
    p.acquire(a, T0 + 61)
    p.release(a)
    midnight = datetime(2026, 11, 23, tzinfo=UTC).timestamp()
    assert p.block(a, T0 + 200) == (Block.DAILY, midnight)
    assert p.block(a, midnight + 1) is None  # a new quota day


def test_no_account_answers_503_when_cause_is_not_rate() -> None:
    p = pool(Limits("a"))
    p.disable(p.states["a"], "401 from upstream")
    u = p.unavailable("m", T0)
    assert u.status == 503
    assert u.retry_after is None


def test_rate_cause_wins_when_mixed_and_retry_after_is_soonest() -> None:
    p = pool(Limits("a"), Limits("b"), Limits("c"))
    p.disable(p.states["a"], "401")
    p.rate_limited(p.states["b"], T0, 50)
    p.rate_limited(p.states["c"], T0, 20)
    u = p.unavailable("m", T0)
    assert (u.status, u.retry_after) == (429, 20)


def test_persisted_state_round_trips_and_auth_disable_does_not_persist() -> None:
    p = pool(Limits("a"), Limits("b"))
    p.quota_exhausted(p.states["a"], T0, None)
    p.acquire(p.states["a"], T0)
    p.add_usage(p.states["a"], 10, 5, T0)
    p.disable(p.states["b"], "401")
    saved = {n: st.to_dict() for n, st in p.states.items()}
    q = pool(Limits("a"), Limits("b"))
    for n, st in q.states.items():
        st.restore(saved[n])
    assert q.states["a"].quota_until == p.states["a"].quota_until
    assert q.states["a"].day_requests == 1
    assert q.states["a"].prompt_tokens == 10
    assert q.states["b"].disabled is None


def test_persistent_disable_survives_restore() -> None:
    p = pool(Limits("a"))
    p.disable(p.states["a"], "refresh token rejected", persist=True)
    q = pool(Limits("a"))
    q.states["a"].restore(p.states["a"].to_dict())
    assert q.states["a"].disabled == "refresh token rejected"


def test_reload_keeps_state_of_accounts_that_stay() -> None:
    p = pool(Limits("a"), Limits("b"))
    p.rate_limited(p.states["a"], T0, 100)
    p.disable(p.states["b"], "401")
    p.replace_accounts([Limits("a", weight=5), Limits("c")])
    assert set(p.states) == {"a", "c"}
    assert p.states["a"].cooldown_until == T0 + 100
    assert p.states["a"].limits.weight == 5


@pytest.mark.parametrize(
    ("status", "body", "verdict"),
    [
        (200, b"", Verdict.OK),
        (400, b"", Verdict.CLIENT_ERROR),
        (404, b"", Verdict.CLIENT_ERROR),
        (413, b"", Verdict.CLIENT_ERROR),
        (422, b"", Verdict.CLIENT_ERROR),
        (401, b"", Verdict.AUTH),
        (403, b"forbidden", Verdict.AUTH),
        (408, b"", Verdict.FAILURE),
        (500, b"", Verdict.FAILURE),
        (503, b"", Verdict.FAILURE),
        (429, b'{"error":{"message":"slow down"}}', Verdict.RATE),
        (429, b'{"error":{"code":"insufficient_quota"}}', Verdict.QUOTA),
        (429, b'{"error":{"message":"You exceeded your current quota"}}', Verdict.QUOTA),
        (403, b'{"message":"Free allocated quota exceeded."}', Verdict.QUOTA),
        (429, b'{"code":"Throttling.AllocationQuota"}', Verdict.QUOTA),
        (403, b'{"code":"AllocationQuota.FreeTierOnly"}', Verdict.QUOTA),
        (429, b"Quota exceeded for today", Verdict.QUOTA),
    ],
)
def test_classify(status: int, body: bytes, verdict: Verdict) -> None:
    assert classify(status, body) is verdict


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("30", T0) == 30
    assert parse_retry_after("Sun, 22 Nov 2026 12:01:00 GMT", T0) == 60
    assert parse_retry_after("garbage", T0) is None
    assert parse_retry_after(None, T0) is None


@settings(max_examples=200, deadline=None)
@given(
    hs.lists(
        hs.tuples(
            hs.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"]),
            hs.integers(0, 23),
            hs.sampled_from([0, 30]),
            # Around the 2026 DST changes and beyond, in any order.
            hs.floats(1_774_000_000, 1_800_000_000, allow_nan=False),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_the_remembered_quota_day_is_always_the_computed_one(
    asks: list[tuple[str, int, int, float]],
) -> None:
    for tz, hour, minute, now in asks:
        lim = Limits("a", reset_tz=tz, reset_hour=hour, reset_minute=minute)
        assert _day_start(lim, now) == last_reset(lim, now)


# -- never refuse on a guess --------------------------------------------------------------


def test_an_open_circuit_steers_but_the_soonest_blocked_account_is_the_fallback() -> None:
    p = pool(Limits("a"), Limits("b"), Limits("c"))
    a, b, c = (p.states[n] for n in "abc")
    for n in range(3):
        p.failed(a, T0 + 1, "500", "chat", n)  # open until T0 + 31
        p.failed(b, T0 + 2, "500", "chat", n)  # open until T0 + 32
    p.disable(c, "401")
    assert p.candidates("m", T0 + 3, scope="chat") == []
    assert p.fallback("m", T0 + 3, scope="chat") is a  # a's circuit closes first
    assert p.fallback("m", T0 + 3, exclude={"a"}, scope="chat") is b
    assert p.fallback("m", T0 + 3, exclude={"a", "b"}, scope="chat") is None  # c: the word


def test_a_route_scope_blocks_only_that_route_and_the_account_scope_blocks_all() -> None:
    p = pool(Limits("a"))
    a = p.states["a"]
    for n in range(3):
        p.failed(a, T0, "500", "responses", n)
    assert p.block(a, T0, "responses") == (Block.BREAKER, T0 + 30)
    assert p.block(a, T0, "chat") is None
    for _ in range(3):
        p.failed(a, T0, "connection refused")  # the account scope: no fingerprint
    assert p.block(a, T0, "chat") == (Block.BREAKER, T0 + 30)
    assert p.hard_block(a, T0) is None
    assert p.ready(T0) == ["a"]


def test_the_same_request_failing_again_counts_once() -> None:
    p = pool(Limits("a"))
    a = p.states["a"]
    for _ in range(10):
        p.failed(a, T0, "500", "chat", 42)
    assert p.block(a, T0, "chat") is None
    p.failed(a, T0, "500", "chat", 43)
    p.failed(a, T0, "500", "chat", 44)
    assert p.block(a, T0, "chat") == (Block.BREAKER, T0 + 30)


def test_a_success_closes_its_scope_and_the_account_scope_but_not_another_route() -> None:
    p = pool(Limits("a"))
    a = p.states["a"]
    for n in range(3):
        p.failed(a, T0, "500", "responses", n)
        p.failed(a, T0, "500", "embeddings", n)
    p.succeeded(a, "embeddings")
    assert p.block(a, T0, "embeddings") is None
    assert p.block(a, T0, "responses") == (Block.BREAKER, T0 + 30)


def test_a_guessed_backoff_is_soft_and_a_retry_after_is_hard() -> None:
    p = pool(Limits("a"))
    a = p.states["a"]
    p.rate_limited(a, T0, None)
    assert p.hard_block(a, T0) is None
    assert p.soft_block(a, T0) == (Block.RATE, T0 + 1)
    p.rate_limited(a, T0, 30)
    assert p.hard_block(a, T0) == (Block.RATE, T0 + 30)
    p.rate_limited(a, T0 + 1, None)  # a guess never shortens the upstream's word
    assert p.hard_block(a, T0 + 1) == (Block.RATE, T0 + 30)
    assert p.unavailable("m", T0 + 1) == Unavailable(
        429, "all accounts are rate limited or out of quota", 29
    )


def test_operator_limits_are_hard_blocks() -> None:
    p = pool(Limits("a", max_concurrent=1))
    a = p.states["a"]
    p.acquire(a, T0)
    assert p.hard_block(a, T0) == (Block.BUSY, None)
    assert p.fallback("m", T0) is None
    assert p.ready(T0) == []


def test_a_probe_that_fails_reopens_even_when_it_was_the_same_request() -> None:
    p = pool(Limits("a"))
    a = p.states["a"]
    for n in range(3):
        p.failed(a, T0, "500", "chat", n)
    p.acquire(a, T0 + 30, "chat")  # half-open: this one is the probe
    assert p.block(a, T0 + 30, "chat") == (Block.BREAKER, None)
    p.failed(a, T0 + 30, "500", "chat", 2)
    assert p.block(a, T0 + 30, "chat") == (Block.BREAKER, T0 + 60)


@settings(max_examples=200, deadline=None)
@given(
    hs.lists(
        hs.tuples(
            hs.sampled_from(["fail", "rate", "retry_after", "quota", "ok"]),
            hs.sampled_from(["a", "b"]),
            hs.sampled_from(["chat", "responses", "*"]),
            hs.integers(0, 5),
        ),
        max_size=30,
    )
)
def test_a_request_is_refused_only_when_every_account_is_blocked_by_word_or_limit(
    steps: list[tuple[str, str, str, int]],
) -> None:
    p = pool(Limits("a"), Limits("b"))
    now = T0
    for action, name, scope, n in steps:
        st = p.states[name]
        now += 0.5
        if action == "fail":
            p.failed(st, now, "500", scope, n)
        elif action == "rate":
            p.rate_limited(st, now, None)
        elif action == "retry_after":
            p.rate_limited(st, now, 5.0)
        elif action == "quota":
            p.quota_exhausted(st, now, 5.0)
        else:
            p.succeeded(st, scope)
        for route in ("chat", "responses"):
            chosen = p.pick("m", now, scope=route) or p.fallback("m", now, scope=route)
            hard = [p.hard_block(s, now) for s in p.states.values()]
            assert (chosen is None) == all(h is not None for h in hard)


def test_an_operators_reset_clears_cooldown_backoff_circuits_and_quota() -> None:
    p = pool(Limits("a"))
    a = p.states["a"]
    p.quota_exhausted(a, T0, 3600)
    p.rate_limited(a, T0, 60)
    for n in range(3):
        p.failed(a, T0, "500", "chat", n)
    assert p.hard_block(a, T0) is not None
    p.reset(a, T0 + 1)
    assert p.block(a, T0 + 1) is None
    assert a.breakers == {} and a.backoff == 0.0
