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
from typing import TYPE_CHECKING

import aiohttp
from multidict import CIMultiDict

from . import upstream as up
from .accounts import AccountState, Limits, Pool, Strategy
from .config import AccountConfig, Config
from .errors import NoAccount, NotFound, RateLimited, SeamlineError, UpstreamError
from .health import FAILOVER, Verdict, classify, parse_retry_after
from .logs import get_logger, redactor
from .oauth import OAuthAccount, OAuthError, OAuthRevoked
from .outcome import Outcome
from .relay import read_body
from .wire import Client, Response

if TYPE_CHECKING:
    from .shared import SharedPool

log = get_logger("seamline.routing")

ERROR_BODY_LIMIT = 1024 * 1024


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


@dataclass(frozen=True, slots=True)
class Bodies:
    """The request body to send, the client's original, and the one that forces a stream."""

    send: bytes
    original: bytes
    forced: bytes | None = None


@dataclass
class UpstreamAnswer:
    """A usable upstream answer: the caller relays it, then calls ``finish``."""

    account: AccountConfig
    state: AccountState
    response: Response


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
    informative; a rate limit or a rejected key is better told by seamline itself).
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
    ) -> UpstreamAnswer | FailedAnswer:
        """Send to accounts in turn until one gives a usable answer.

        An upstream that rejects a body seamline changed (``stream_options``) with a
        400 is asked once more with the client's original. ``tried``: the accounts this
        request already went to, extended in place with each one tried here; they count
        against ``routing.max_attempts``, and a later call does not try them again.
        """
        self._pick_up_new_logins()
        pool = self.pool
        accounts = self.accounts
        tried = [] if tried is None else tried
        limit = self.config.routing.max_attempts or len(pool.serving(model))
        last_failure: FailedAnswer | None = None
        last_error: SeamlineError | None = None
        while len(tried) < limit:
            now = time.time()
            st = await self._take(model, now, tried)
            if st is None:
                break
            tried.append(st.name)
            acc = accounts[st.name]
            pool.acquire(st, now)
            try:
                answer = await self._attempt(
                    session, client, acc, st, method, tail, query, client_headers, bodies, outcome
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
        if verdict.status == 429:
            raise RateLimited(verdict.message, retry_after=verdict.retry_after)
        if last_failure is not None:
            return last_failure
        if last_error is not None:
            raise last_error
        raise NoAccount(verdict.message, retry_after=verdict.retry_after)

    async def _take(self, model: str | None, now: float, tried: list[str]) -> AccountState | None:
        """The next account to try; with replicas, one that all of them allow now."""
        pool, shared = self.pool, self.shared
        if shared is None:
            return pool.pick(model, now, exclude=tried)
        rotate = pool.strategy is Strategy.ROUND_ROBIN
        refused = list(tried)
        # Each round either takes an account or leaves out every candidate it offered,
        # so this ends; a refusal costs no attempt, as the account was never called.
        while candidates := pool.candidates(model, now, exclude=refused):
            st, offered = await shared.take(candidates, rotate, now, pool.choose)
            if st is not None:
                return st
            refused += [c.name for c in offered]
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
    ) -> UpstreamAnswer | FailedAnswer | FailedOver:
        """One account: a usable answer, a client error, or FailedOver (pool told)."""
        pool = self.pool
        timeouts = self.config.timeouts_for(acc)
        original = bodies.original
        body = bodies.forced if acc.force_stream and bodies.forced is not None else bodies.send
        oauth = self.oauth.get(acc.name)
        token: str | None = None
        retried_401 = retried_body = False
        while True:
            try:
                base_url = acc.base_url
                if oauth is not None:
                    token = await oauth.token(session, time.time())
                    base_url = acc.base_url or oauth.base_url
                headers = up.request_headers(client_headers, acc, outcome.request_id, token)
                url = up.target_url(base_url, tail, query)
                proxy = self.config.proxy_for(acc, url)
                resp = await up.send(client, method, url, headers, body, timeouts, proxy)
            except OAuthRevoked as exc:
                self._disable(st, exc.message, persist=True, outcome=outcome)
                raise
            except UpstreamError as exc:
                pool.failed(st, time.time(), exc.message)
                _note(outcome, acc, exc.message)
                raise
            if resp.status < 400:
                pool.succeeded(st)
                return UpstreamAnswer(acc, st, resp)
            err_body = await read_body(resp, ERROR_BODY_LIMIT, timeouts)
            verdict = classify(resp.status, err_body)
            now = time.time()
            if verdict is Verdict.AUTH and oauth is not None and token and not retried_401:
                retried_401 = True
                try:
                    await oauth.refresh_after_401(session, token)
                except OAuthRevoked as exc:
                    self._disable(st, exc.message, persist=True, outcome=outcome)
                    raise
                except OAuthError as exc:
                    pool.failed(st, now, exc.message)
                    _note(outcome, acc, exc.message)
                    raise
                continue
            if (
                verdict is Verdict.CLIENT_ERROR
                and resp.status == 400
                and body is not original
                and not retried_body
            ):
                retried_body = True  # maybe it refused the stream_options we added
                body = original
                continue
            out_headers = up.response_headers(resp.headers)
            return self._judge(
                acc, st, verdict, FailedAnswer(resp.status, out_headers, err_body), outcome
            )

    def _judge(
        self,
        acc: AccountConfig,
        st: AccountState,
        verdict: Verdict,
        answer: FailedAnswer,
        outcome: Outcome,
    ) -> FailedAnswer | FailedOver:
        """What an upstream's error answer means: the client's own error to return, or
        a failure of the account (the pool told) to move on from."""
        if verdict not in FAILOVER:
            return answer
        pool = self.pool
        now = time.time()
        reason = f"{answer.status} {verdict.value}"
        retry_after = parse_retry_after(answer.headers.get("Retry-After"), now)
        if verdict is Verdict.QUOTA:
            pool.quota_exhausted(st, now, retry_after)
        elif verdict is Verdict.RATE:
            pool.rate_limited(st, now, retry_after)
        elif verdict is Verdict.AUTH:
            self._disable(
                st,
                f"upstream answered {answer.status}: credentials rejected",
                persist=False,
                outcome=outcome,
            )
            return FailedOver(None)
        else:
            pool.failed(st, now, reason)
            _note(outcome, acc, reason)
            return FailedOver(answer)
        _note(outcome, acc, reason)
        return FailedOver(None)

    def early_error(
        self, answer: UpstreamAnswer, status: int, payload: bytes, outcome: Outcome
    ) -> bool:
        """A 2xx stream whose first event was an error (or that broke before any event),
        with nothing sent to the client yet: judge it as if the upstream had answered
        ``status``, and release the account. True when it is the account's failure, so
        another account may take the request."""
        self.pool.release(answer.state)
        verdict = classify(status, payload)
        failed = FailedAnswer(status, CIMultiDict(), payload)
        return isinstance(
            self._judge(answer.account, answer.state, verdict, failed, outcome), FailedOver
        )

    def may_retry(self, model: str | None, tried: Sequence[str]) -> bool:
        """Another account may still take this request (a local look; it acquires nothing)."""
        pool = self.pool
        limit = self.config.routing.max_attempts or len(pool.serving(model))
        return len(tried) < limit and bool(pool.candidates(model, time.time(), exclude=tried))

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
        _note(outcome, self.accounts[st.name], reason)

    def finish(
        self,
        answer: UpstreamAnswer,
        outcome: Outcome,
        usage: tuple[int, int] | None,
        broken: str | None,
    ) -> None:
        """The relay is over: release the account and book usage or the failure."""
        pool = self.pool
        now = time.time()
        pool.release(answer.state)
        if usage is not None:
            pool.add_usage(answer.state, usage[0], usage[1], now)
        if broken is not None:
            pool.failed(answer.state, now, broken)


def _fingerprint(secret: str) -> str:
    """Tells two secrets apart without keeping either (it is persisted)."""
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


def _note(outcome: Outcome, acc: AccountConfig, reason: str) -> None:
    outcome.attempts.append({"account": acc.name, "reason": redactor.scrub(reason)})


def _unavailable(pool: Pool, model: str | None, now: float) -> SeamlineError:
    verdict = pool.unavailable(model, now)
    if verdict.status == 404:
        err: SeamlineError = NotFound(verdict.message)
        err.code = "model_not_found"
        return err
    if verdict.status == 429:
        return RateLimited(verdict.message, retry_after=verdict.retry_after)
    return NoAccount(verdict.message, retry_after=verdict.retry_after)
