"""Failover before the first byte: try eligible accounts until one answers usefully.

The pool (pure) decides who is next and remembers what each answer meant; this
module makes the calls, reads error bodies, and keeps failed attempts out of the
client's sight.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
from multidict import CIMultiDict

from proxy.config import AccountConfig, Config
from proxy.core.plan import Bodies
from proxy.errors import (
    NoAccount,
    NotFound,
    RateLimited,
    SeamlineError,
    UpstreamConnectTimeout,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from proxy.gateway.outcome import Attempt, Outcome
from proxy.gateway.routes import api_route
from proxy.logs import get_logger, redactor, shown, trace_bytes
from proxy.pool.accounts import ACCOUNT, AccountState, Limits, Pool, Strategy
from proxy.pool.health import parse_retry_after
from proxy.pool.policy import Decision, Effect, Failure, Next, decide
from proxy.upstream import call as up
from proxy.upstream.call import read_body
from proxy.upstream.credentials import OAuthError, OAuthRevoked
from proxy.upstream.oauth import OAuthAccount
from proxy.upstream.wire import Client, Response

if TYPE_CHECKING:
    from proxy.state.shared import SharedPool

log = get_logger("seamline.routing")

ERROR_BODY_LIMIT = 1024 * 1024
# How long an account that refused ``stream_options`` gets requests without it.
PLAIN_S = 3600.0

def _connect_failure(exc: UpstreamError) -> bool:
    """The account could not be reached at all, whatever the request: its whole breaker."""
    return isinstance(exc, UpstreamUnreachable | UpstreamConnectTimeout)


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
class UpstreamAnswer:
    """A usable upstream answer: the caller relays it, then calls ``finish``."""

    account: AccountConfig
    state: AccountState
    response: Response
    scope: str = ACCOUNT
    fingerprint: int = 0
    # What the upstream was sent that it could echo back: never for the client to see.
    secrets: tuple[bytes, ...] = ()


@dataclass
class FailedAnswer:
    """An upstream error answer the client gets as it is (status, headers, body)."""

    status: int
    headers: CIMultiDict[str]
    body: bytes


@dataclass
class FailedOver:
    """The account failed in a way that moves on to the next one.

    ``answer`` is what the client gets should every account fail so (5xx bodies are
    informative, as is a 429; a quota or a rejected key is better told by seamline).
    """

    answer: FailedAnswer | None


@dataclass
class Router:
    """Accounts, the pool and OAuth state for one config; replaced whole on reload."""

    config: Config
    pool: Pool
    oauth: dict[str, OAuthAccount] = field(default_factory=dict)
    shared: SharedPool | None = None  # replicas sharing state through Redis

    @property
    def accounts(self) -> dict[str, AccountConfig]:
        return {a.name: a for a in self.config.accounts}

    def model_for(self, model: str | None) -> str | None:
        if model is None:
            return None
        return self.config.aliases.get(model, model)

    async def open(
        self,
        session: aiohttp.ClientSession,
        client: Client,
        method: str,
        tail: str,
        query: str,
        client_headers: Mapping[str, str],
        bodies: Bodies,
        model: str | None,
        outcome: Outcome,
        tried: list[str] | None = None,
        tracer: Any = None,
    ) -> UpstreamAnswer | FailedAnswer:
        """Send to accounts in turn until one gives a usable answer.

        ``tried``: the accounts this request already went to, extended in place with
        each one tried here; they count against ``routing.max_attempts``, and a later
        call does not try them again. ``tracer``: a logger when DEBUG_STREAMING is on.
        """
        self._pick_up_new_logins()
        pool = self.pool
        accounts = self.accounts
        scope = api_route(tail).scope
        tried = [] if tried is None else tried
        limit = self.config.routing.max_attempts or len(pool.serving(model))
        last_failure: FailedAnswer | None = None
        last_error: SeamlineError | None = None
        while len(tried) < limit:
            now = time.time()
            st = await self._take(model, now, tried, scope)
            if st is None:
                break
            tried.append(st.name)
            acc = accounts[st.name]
            pool.acquire(st, now, scope)
            try:
                answer = await self._attempt(
                    session,
                    client,
                    acc,
                    st,
                    method,
                    tail,
                    query,
                    client_headers,
                    bodies,
                    outcome,
                    tracer,
                )
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

    async def _attempt(
        self,
        session: aiohttp.ClientSession,
        client: Client,
        acc: AccountConfig,
        st: AccountState,
        method: str,
        tail: str,
        query: str,
        client_headers: Mapping[str, str],
        bodies: Bodies,
        outcome: Outcome,
        tracer: Any,
    ) -> UpstreamAnswer | FailedAnswer | FailedOver:
        """One account: a usable answer, a client error, or FailedOver (pool told)."""
        pool = self.pool
        scope = api_route(tail).scope
        fingerprint = bodies.fingerprint
        timeouts = self.config.timeouts_for(acc)
        body, may_drop_options = bodies.body(acc.force_stream, st.plain_until > time.time())
        oauth = self.oauth.get(acc.name)
        token: str | None = None
        retried_401 = False
        while True:
            try:
                base_url = acc.base_url
                if oauth is not None:
                    token = await oauth.token(session, time.time())
                    base_url = acc.base_url or oauth.base_url
                headers = up.request_headers(client_headers, acc, outcome.request_id, token)
                url = up.target_url(base_url, tail, query)
                proxy = self.config.proxy_for(acc, url)
                if tracer is not None:
                    _trace_request(tracer, acc.name, method, url, headers, body)
                resp = await up.send(client, method, url, headers, body, timeouts, proxy)
                if tracer is not None:
                    tracer.debug(
                        "upstream_response",
                        account=acc.name,
                        status=resp.status,
                        headers=dict(resp.headers),
                    )
            except OAuthRevoked as exc:
                self._disable(st, exc.message, persist=True, outcome=outcome)
                raise
            except UpstreamError as exc:
                where = ACCOUNT if _connect_failure(exc) else scope
                pool.failed(st, time.time(), exc.message, where, fingerprint)
                _note(outcome, acc, _failure_of(exc), exc.message)
                raise
            if resp.status < 400:
                # Whether the answer works is known once it ended (``finish``).
                pool.answered(st)
                sent = tuple(k.encode() for k in {acc.api_key, token} if k and len(k) >= 4)
                return UpstreamAnswer(acc, st, resp, scope, fingerprint, sent)
            err_body = await read_body(resp, ERROR_BODY_LIMIT, timeouts)
            decision = decide(
                resp.status,
                err_body,
                can_refresh=oauth is not None and bool(token) and not retried_401,
                can_drop_options=may_drop_options,
            )
            now = time.time()
            if decision.next is Next.REFRESH:
                assert oauth is not None and token is not None
                retried_401 = True
                try:
                    await oauth.refresh_after_401(session, token)
                except OAuthRevoked as exc:
                    self._disable(st, exc.message, persist=True, outcome=outcome)
                    raise
                except OAuthError as exc:
                    pool.failed(st, now, exc.message, ACCOUNT)
                    _note(outcome, acc, Failure.OAUTH, exc.message)
                    raise
                continue
            if decision.next is Next.WITHOUT_OPTIONS:
                # It refused the stream_options seamline added (not the client): ask once
                # more without them, and leave them out for this account for a while.
                st.plain_until = now + PLAIN_S
                log.info(
                    "stream_options_refused",
                    account=acc.name,
                    status=resp.status,
                    request_id=outcome.request_id,
                )
                body, may_drop_options = bodies.body(acc.force_stream, True)
                continue
            allowed = up.header_filter(self.config.server.forward_response_headers)
            out_headers = up.response_headers(resp.headers, resp.status, allowed)
            failed = FailedAnswer(resp.status, out_headers, err_body)
            return self._judge(acc, st, decision, failed, outcome, scope, fingerprint)

    def _judge(
        self,
        acc: AccountConfig,
        st: AccountState,
        decision: Decision,
        answer: FailedAnswer,
        outcome: Outcome,
        scope: str,
        fingerprint: int,
    ) -> FailedAnswer | FailedOver:
        """Apply a decision on an upstream's error answer: the client's own error to
        return, or a failure of the account (the pool told) to move on from."""
        if decision.next is not Next.FAIL_OVER:
            return answer
        assert decision.failure is not None
        pool = self.pool
        now = time.time()
        reason = f"{answer.status} {decision.failure.value}"
        retry_after = parse_retry_after(answer.headers.get("Retry-After"), now)
        effect = decision.effect
        if effect is Effect.QUOTA:
            pool.quota_exhausted(st, now, retry_after)
        elif effect is Effect.COOLDOWN:
            pool.rate_limited(st, now, retry_after)
        elif effect is Effect.DISABLE:
            reason = f"upstream answered {answer.status}: credentials rejected"
            self._disable(st, reason, persist=False, outcome=outcome)
            return FailedOver(None)
        elif effect is Effect.FAILURE:
            pool.failed(st, now, reason, scope, fingerprint)
        _note(outcome, acc, decision.failure, reason)
        return FailedOver(answer if decision.keep else None)

    def early_error(
        self, answer: UpstreamAnswer, status: int, payload: bytes, outcome: Outcome
    ) -> bool:
        """A 2xx stream whose first event was an error (or that broke before any event),
        with nothing sent to the client yet: judge it as if the upstream had answered
        ``status``, and release the account. True when it is the account's failure, so
        another account may take the request."""
        self.pool.release(answer.state)
        failed = FailedAnswer(status, CIMultiDict(), payload)
        judged = self._judge(
            answer.account,
            answer.state,
            decide(status, payload),
            failed,
            outcome,
            answer.scope,
            answer.fingerprint,
        )
        return isinstance(judged, FailedOver)

    def may_retry(self, model: str | None, tried: Sequence[str], tail: str) -> bool:
        """Another account may still take this request (a local look; it acquires nothing)."""
        pool = self.pool
        limit = self.config.routing.max_attempts or len(pool.serving(model))
        if len(tried) >= limit:
            return False
        now, scope = time.time(), api_route(tail).scope
        return pool.fallback(model, now, tried, scope) is not None

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

    def _disable(self, st: AccountState, reason: str, *, persist: bool, outcome: Outcome) -> None:
        oauth = self.oauth.get(st.name)
        refused = _fingerprint(oauth.credentials.refresh_token) if persist and oauth else None
        if self.pool.disable(st, reason, persist=persist, credential=refused):
            log.error(
                "account_disabled", account=st.name, reason=reason, request_id=outcome.request_id
            )
        _note(outcome, self.accounts[st.name], Failure.OAUTH if persist else Failure.AUTH, reason)

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


def _trace_request(
    tracer: Any, account: str, method: str, url: str, headers: Mapping[str, str], body: bytes
) -> None:
    # The redactor masks the credentials (by header name) and anything key-shaped.
    tracer.debug(
        "upstream_request",
        account=account,
        method=method,
        url=url,
        headers=dict(headers),
        body=shown(body, trace_bytes()),
    )


def _fingerprint(secret: str) -> str:
    """Tells two secrets apart without keeping either (it is persisted)."""
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


def _note(outcome: Outcome, acc: AccountConfig, failure: Failure, reason: str) -> None:
    outcome.attempts.append(Attempt(acc.name, failure, redactor.scrub(reason)))


def _failure_of(exc: UpstreamError) -> Failure:
    if isinstance(exc, OAuthError):
        return Failure.OAUTH
    if isinstance(exc, UpstreamUnreachable):
        return Failure.UNREACHABLE
    if isinstance(exc, UpstreamTimeout):
        return Failure.TIMEOUT
    return Failure.PROTOCOL


def _unavailable(pool: Pool, model: str | None, now: float) -> SeamlineError:
    verdict = pool.unavailable(model, now)
    if verdict.status == 404:
        err: SeamlineError = NotFound(verdict.message)
        err.code = "model_not_found"
        return err
    if verdict.status == 429:
        return RateLimited(verdict.message, retry_after=verdict.retry_after)
    return NoAccount(verdict.message, retry_after=verdict.retry_after)
