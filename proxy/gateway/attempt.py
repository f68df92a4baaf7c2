"""One attempt at one account: the call, its error answer judged, the pool told.

The routing loop (``routing.py``) picks the accounts; this sends to one of them,
refreshes an OAuth token or drops the ``stream_options`` seamline added when the
policy says so, and turns what came back into an answer to relay, the client's own
error, or a failure to move on from.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from multidict import CIMultiDict

from proxy.config import AccountConfig, Config
from proxy.errors import (
    UpstreamConnectTimeout,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from proxy.gateway.context import Call
from proxy.gateway.outcome import Attempt, Outcome
from proxy.logs import get_logger, redactor, shown, trace_bytes
from proxy.pool.accounts import ACCOUNT, AccountState, Pool
from proxy.pool.health import parse_retry_after
from proxy.pool.policy import Decision, Effect, Failure, Next, decide
from proxy.upstream import call as up
from proxy.upstream.call import read_body
from proxy.upstream.credentials import OAuthError, OAuthRevoked
from proxy.upstream.oauth import OAuthAccount
from proxy.upstream.wire import ConnectionPool, Response


class Router(Protocol):
    """What an attempt needs of the routing loop's router (``routing.Router`` is one;
    a protocol, so that this module imports nothing of the loop)."""

    @property
    def pool(self) -> Pool: ...
    @property
    def config(self) -> Config: ...
    @property
    def oauth(self) -> dict[str, OAuthAccount]: ...
    @property
    def connections(self) -> ConnectionPool: ...

    def session(self) -> aiohttp.ClientSession: ...

    def disable(
        self, st: AccountState, reason: str, *, persist: bool, outcome: Outcome
    ) -> None: ...


log = get_logger("seamline.routing")

ERROR_BODY_LIMIT = 1024 * 1024
# How long an account that refused ``stream_options`` gets requests without it.
PLAIN_S = 3600.0


@dataclass(slots=True)
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


async def attempt(
    router: Router, call: Call, acc: AccountConfig, st: AccountState
) -> UpstreamAnswer | FailedAnswer | FailedOver:
    """One account: a usable answer, a client error, or FailedOver (pool told)."""
    pool, config, outcome, tracer = router.pool, router.config, call.outcome, call.tracer
    path, bodies = call.for_account(acc.api, acc.name)
    scope = call.route.scope
    fingerprint = bodies.fingerprint
    timeouts = config.timeouts_for(acc)
    body, may_drop_options = bodies.body(acc.force_stream, st.plain_until > time.time())
    oauth = router.oauth.get(acc.name)
    token: str | None = None
    retried_401 = False
    while True:
        try:
            base_url = acc.base_url
            if oauth is not None:
                token = await oauth.token(router.session(), time.time())
                base_url = acc.base_url or oauth.base_url
            headers = up.request_headers(call.headers, acc, outcome.request_id, token)
            url = up.target_url(base_url, path, call.query)
            proxy = config.proxy_for(acc, url)
            if tracer is not None:
                _trace_request(tracer, acc.name, call.method, url, headers, body)
            resp = await up.send(
                router.connections, call.method, url, headers, body, timeouts, proxy
            )
            if tracer is not None:
                tracer.debug(
                    "upstream_response",
                    account=acc.name,
                    status=resp.status,
                    headers=dict(resp.headers),
                )
        except OAuthRevoked as exc:
            router.disable(st, exc.message, persist=True, outcome=outcome)
            raise
        except UpstreamError as exc:
            where = ACCOUNT if _connect_failure(exc) else scope
            pool.failed(st, time.time(), exc.message, where, fingerprint)
            _note(outcome, acc, _failure_of(exc), exc.message)
            raise
        if resp.status < 400:
            # Whether the answer works is known once it ended (``finish``).
            pool.answered(st)
            return UpstreamAnswer(acc, st, resp, scope, fingerprint, _secrets(acc.api_key, token))
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
                await oauth.refresh_after_401(router.session(), token)
            except OAuthRevoked as exc:
                router.disable(st, exc.message, persist=True, outcome=outcome)
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
        allowed = up.header_filter(config.server.forward_response_headers)
        out_headers = up.response_headers(resp.headers, resp.status, allowed)
        failed = FailedAnswer(resp.status, out_headers, err_body)
        return judge(router, acc, st, decision, failed, outcome, scope, fingerprint)


def judge(
    router: Router,
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
    pool = router.pool
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
        router.disable(st, reason, persist=False, outcome=outcome)
        return FailedOver(None)
    elif effect is Effect.FAILURE:
        pool.failed(st, now, reason, scope, fingerprint)
    _note(outcome, acc, decision.failure, reason)
    return FailedOver(answer if decision.keep else None)


@functools.lru_cache(maxsize=1024)
def _secrets(api_key: str | None, token: str | None) -> tuple[bytes, ...]:
    """What an upstream is sent that it could echo back, as the bytes to mask: one
    tuple for all the answers of an account (and token), not one each, which a stream
    would hold for its life."""
    return tuple(k.encode() for k in {api_key, token} if k and len(k) >= 4)


def _connect_failure(exc: UpstreamError) -> bool:
    """The account could not be reached at all, whatever the request: its whole breaker."""
    return isinstance(exc, UpstreamUnreachable | UpstreamConnectTimeout)


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
