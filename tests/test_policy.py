"""The failover policy as a pure function: an upstream answer and what the attempt may
still do, in; what happens next and what the pool learns, out."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.pool.policy import Decision, Effect, Failure, Next, decide

QUOTA = json.dumps({"error": {"code": "insufficient_quota", "message": "quota"}}).encode()
EXTRA = json.dumps({"detail": [{"loc": ["body", "stream_options"], "msg": "Extra inputs"}]})


@pytest.mark.parametrize(
    ("status", "body", "decision"),
    [
        (400, b"{}", Decision(Next.RETURN)),
        (404, b"{}", Decision(Next.RETURN)),
        (422, b"{}", Decision(Next.RETURN)),
        (429, b"{}", Decision(Next.FAIL_OVER, Effect.COOLDOWN, True, Failure.RATE)),
        (429, QUOTA, Decision(Next.FAIL_OVER, Effect.QUOTA, False, Failure.QUOTA)),
        (403, QUOTA, Decision(Next.FAIL_OVER, Effect.QUOTA, False, Failure.QUOTA)),
        (401, b"{}", Decision(Next.FAIL_OVER, Effect.DISABLE, False, Failure.AUTH)),
        (403, b"{}", Decision(Next.FAIL_OVER, Effect.DISABLE, False, Failure.AUTH)),
        (408, b"{}", Decision(Next.FAIL_OVER, Effect.FAILURE, True, Failure.UPSTREAM)),
        (500, b"{}", Decision(Next.FAIL_OVER, Effect.FAILURE, True, Failure.UPSTREAM)),
        (529, b"{}", Decision(Next.FAIL_OVER, Effect.FAILURE, True, Failure.UPSTREAM)),
    ],
)
def test_each_answer_has_its_decision(status: int, body: bytes, decision: Decision) -> None:
    assert decide(status, body) == decision


def test_a_refused_token_is_refreshed_once_before_the_account_is_given_up() -> None:
    assert decide(401, b"{}", can_refresh=True).next is Next.REFRESH
    assert decide(401, b"{}", can_refresh=False).effect is Effect.DISABLE
    assert decide(500, b"{}", can_refresh=True).next is Next.FAIL_OVER


@pytest.mark.parametrize("status", [400, 422])
def test_an_answer_naming_the_added_option_asks_again_without_it(status: int) -> None:
    assert decide(status, EXTRA.encode(), can_drop_options=True).next is Next.WITHOUT_OPTIONS
    # Without seamline's option to drop, it is the client's error.
    assert decide(status, EXTRA.encode(), can_drop_options=False).next is Next.RETURN
    # Any other 400 is sent once.
    assert decide(status, b'{"error":"bad"}', can_drop_options=True).next is Next.RETURN


@given(st.integers(400, 599), st.binary(max_size=64), st.booleans(), st.booleans())
def test_only_a_failover_teaches_the_pool_something(
    status: int, body: bytes, refresh: bool, drop: bool
) -> None:
    d = decide(status, body, can_refresh=refresh, can_drop_options=drop)
    assert (d.effect is not Effect.NONE) == (d.next is Next.FAIL_OVER)
    assert (d.failure is not None) == (d.next is Next.FAIL_OVER)
    assert not d.keep or d.next is Next.FAIL_OVER
