"""Failover before the first byte: try eligible accounts until one answers usefully.

The pool (pure) decides who is next and remembers what each answer meant; the policy
(pure) what an answer means; ``attempt.py`` makes one call. This loop keeps failed
attempts out of the client's sight.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp
from multidict import CIMultiDict

from proxy.config import AccountConfig, Config
from proxy.errors import (
    NoAccount,
    NotFound,
    RateLimited,
    SeamlineError,
    UpstreamError,
)
from proxy.gateway.attempt import FailedAnswer, FailedOver, UpstreamAnswer, attempt, judge
from proxy.gateway.context import Call
from proxy.gateway.outcome import Attempt, Outcome
from proxy.logs import get_logger, redactor
from proxy.pool.accounts import AccountState, Limits, Pool, Strategy
from proxy.pool.policy import Failure, decide
from proxy.upstream.oauth import OAuthAccount, TokenHTTP
from proxy.upstream.wire import ConnectionPool

if TYPE_CHECKING:
    from proxy.state.shared import SharedPool

log = get_logger("seamline.routing")


def limits_of(acc: AccountConfig) -> Limits:
    hour, minute, tz = acc.quota_reset
    return Limits(
        name=acc.name,
        models=acc.models,
        priority=acc.priority,
        weight=acc.weight,
        max_concurrent=acc.max_concurrent,
        rpm=acc.rpm,
        daily_requests=acc.daily_requests,
        reset_hour=hour,
        reset_minute=minute,
        reset_tz=tz,
    )


def make_pool(config: Config) -> Pool:
    r = config.routing
    return Pool(
        [limits_of(a) for a in config.accounts],
        strategy=Strategy(r.strategy),
        breaker_threshold=r.breaker_threshold,
        breaker_cooldown=r.breaker_cooldown,
    )


@dataclass
class Router:
    """Accounts, the pool and OAuth state for one config; replaced whole on reload (the
    pool, the connections and the OAuth session outlive it)."""

    config: Config
    pool: Pool
    oauth: dict[str, OAuthAccount] = field(default_factory=dict)
    shared: SharedPool | None = None  # replicas sharing state through Redis
    connections: ConnectionPool = field(default_factory=ConnectionPool)
    token_http: TokenHTTP = field(default_factory=TokenHTTP)  # OAuth token calls

    def session(self) -> aiohttp.ClientSession:
        return self.token_http.session()

    @property
    def accounts(self) -> dict[str, AccountConfig]:
        return {a.name: a for a in self.config.accounts}

    def model_for(self, model: str | None) -> str | None:
        if model is None:
            return None
        return self.config.aliases.get(model, model)

    async def open(self, call: Call) -> UpstreamAnswer | FailedAnswer:
        """Send to accounts in turn until one gives a usable answer.

        ``call.tried``: the accounts this request already went to, extended with each
        one tried here; they count against ``routing.max_attempts``, and a later call
        does not try them again.
        """
        self._pick_up_new_logins()
        pool, model, outcome, tried = self.pool, call.model, call.outcome, call.tried
        accounts = self.accounts
        scope = call.route.scope
        limit = self.config.routing.max_attempts or len(pool.serving(model))
        last_failure: FailedAnswer | None = None
        last_error: SeamlineError | None = None
        while len(tried) < limit:
            now = time.time()
            st = await self._take(model, now, [*tried, *call.excluded], scope)
            if st is None:
                break
            tried.append(st.name)
            acc = accounts[st.name]
            pool.acquire(st, now, scope)
            try:
                answer = await attempt(self, call, acc, st)
            except UpstreamError as exc:
                pool.release(st)
                last_error = exc
                continue
            except BaseException:
                pool.release(st)
                raise
            if isinstance(answer, FailedOver):
                pool.release(st)
                last_failure = answer.answer or last_failure
                continue
            if isinstance(answer, FailedAnswer):
                pool.release(st)
            outcome.account = acc.name
            return answer
        now = time.time()
        if not tried:
            raise _unavailable(pool, model, now)
        verdict = pool.unavailable(model, now)
        if verdict.status == 429 and (last_failure is None or last_failure.status == 429):
            # Told better by seamline: the soonest Retry-After of them all.
            raise RateLimited(verdict.message, retry_after=verdict.retry_after)
        if last_failure is not None:
            return last_failure
        if last_error is not None:
            raise last_error
        raise NoAccount(verdict.message, retry_after=verdict.retry_after)

    async def _take(
        self, model: str | None, now: float, tried: list[str], scope: str
    ) -> AccountState | None:
        """The next account to try; with replicas, one that all of them allow now.

        When every account left is blocked only by seamline's own inference (an open
        circuit, a guessed backoff), the one that recovers soonest takes the request as
        its probe: only the upstream's word or an operator's limit refuses a request.
        """
        pool, shared = self.pool, self.shared
        if shared is None:
            return pool.pick(model, now, tried, scope) or pool.fallback(model, now, tried, scope)
        rotate = pool.strategy is Strategy.ROUND_ROBIN
        refused = list(tried)
        # Each round either takes an account or leaves out every candidate it offered,
        # so this ends; a refusal costs no attempt, as the account was never called.
        while candidates := pool.candidates(model, now, refused, scope):
            st, offered = await shared.take(candidates, rotate, now, pool.choose, scope)
            if st is not None:
                return st
            refused += [c.name for c in offered]
        while (probe := pool.fallback(model, now, refused, scope)) is not None:
            st, _ = await shared.take([probe], False, now, pool.choose, scope, force=True)
            if st is not None:
                return st
            refused.append(probe.name)
        return None

    def early_error(
        self, answer: UpstreamAnswer, status: int, payload: bytes, outcome: Outcome
    ) -> bool:
        """A 2xx stream whose first event was an error (or that broke before any event),
        with nothing sent to the client yet: judge it as if the upstream had answered
        ``status``, and release the account. True when it is the account's failure, so
        another account may take the request."""
        self.pool.release(answer.state)
        failed = FailedAnswer(status, CIMultiDict(), payload)
        judged = judge(
            self,
            answer.account,
            answer.state,
            decide(status, payload),
            failed,
            outcome,
            answer.scope,
            answer.fingerprint,
        )
        return isinstance(judged, FailedOver)

    def may_retry(self, call: Call) -> bool:
        """Another account may still take this request (a local look; it acquires nothing)."""
        pool, tried = self.pool, call.tried
        limit = self.config.routing.max_attempts or len(pool.serving(call.model))
        if len(tried) >= limit:
            return False
        skip = [*tried, *call.excluded]
        return pool.fallback(call.model, time.time(), skip, call.route.scope) is not None

    def _pick_up_new_logins(self) -> None:
        """Put an OAuth account whose refresh was rejected back once its user logs in again.

        The pool never offers a disabled account, so nothing else would look at its
        credentials file again. A login is new when its refresh token is not the one
        refused, which holds across restarts and reloads too.
        """
        for name, oauth in self.oauth.items():
            st = self.pool.states.get(name)
            if st is None or not st.disabled_persist:
                continue
            # ``credentials`` re-reads the file when it changed.
            if _fingerprint(oauth.credentials.refresh_token) != st.disabled_credential:
                oauth.disabled_reason = None
                self.pool.enable(st)

    def disable(self, st: AccountState, reason: str, *, persist: bool, outcome: Outcome) -> None:
        """Take ``st`` out (its credentials were refused), logged once."""
        oauth = self.oauth.get(st.name)
        refused = _fingerprint(oauth.credentials.refresh_token) if persist and oauth else None
        if self.pool.disable(st, reason, persist=persist, credential=refused):
            log.error(
                "account_disabled", account=st.name, reason=reason, request_id=outcome.request_id
            )
        failure = Failure.OAUTH if persist else Failure.AUTH
        outcome.attempts.append(Attempt(st.name, failure, redactor.scrub(reason)))

    def finish(
        self,
        answer: UpstreamAnswer,
        outcome: Outcome,
        usage: tuple[int, int] | None,
        completed: bool,
    ) -> None:
        """The relay is over: release the account, and book usage and what the answer
        proved: a failure when it broke, a success (which closes its circuits) only once
        it ``completed``; a client that left (or a cancelled relay) proves neither."""
        pool = self.pool
        now = time.time()
        pool.release(answer.state)
        if usage is not None:
            pool.add_usage(answer.state, usage[0], usage[1], now)
        if outcome.client_gone:
            return
        if outcome.error is not None:
            pool.failed(answer.state, now, outcome.error, answer.scope, answer.fingerprint)
        elif completed:
            pool.succeeded(answer.state, answer.scope)


def _fingerprint(secret: str) -> str:
    """Tells two secrets apart without keeping either (it is persisted)."""
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


def _unavailable(pool: Pool, model: str | None, now: float) -> SeamlineError:
    verdict = pool.unavailable(model, now)
    if verdict.status == 404:
        err: SeamlineError = NotFound(verdict.message)
        err.code = "model_not_found"
        return err
    if verdict.status == 429:
        return RateLimited(verdict.message, retry_after=verdict.retry_after)
    return NoAccount(verdict.message, retry_after=verdict.retry_after)
