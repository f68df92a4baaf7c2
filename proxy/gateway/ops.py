"""Operator endpoints: liveness, readiness, Prometheus metrics, the account table, and
the admin key that guards the last two."""

from __future__ import annotations

import json
import time

from proxy.config.egress import describe
from proxy.errors import NotFound
from proxy.gateway.metrics import CONTENT_TYPE
from proxy.gateway.middleware import check_client
from proxy.gateway.reply import Reply
from proxy.gateway.request import Request
from proxy.logs import fingerprint


def json_reply(body: object, status: int = 200, indent: int | None = None) -> Reply:
    return Reply(status, json.dumps(body, indent=indent).encode(), None, "application/json")


async def healthz(request: Request) -> Reply:
    """The process is alive and serving."""
    return json_reply({"status": "ok"})


async def readyz(request: Request) -> Reply:
    """503 while draining, or when no account could take a request even as a probe: all
    are blocked by the upstream's word (a disable, a quota, a Retry-After) or by an
    operator's limit. An open circuit alone never makes a replica unready.

    With replicas, ``shared_state`` tells whether Redis is reachable.
    """
    gate = request.app.gate
    pool = request.app.runtime.router.pool
    now = time.time()
    eligible = pool.ready(now)
    body = {
        "status": "ready",
        "draining": gate.draining,
        "accounts_available": len(eligible),
        "accounts_total": len(pool.states),
        "in_flight": gate.in_flight,
    }
    shared = request.app.runtime.shared
    if shared is not None:
        # Not a reason to be unready: without Redis this replica decides on its own view.
        body["shared_state"] = shared.link.status()
    if gate.draining or not eligible:
        body["status"] = "draining" if gate.draining else "no_account_available"
        return json_reply(body, 503)
    return json_reply(body)


def require_admin(request: Request) -> str:
    """401 unless the request carries ``server.admin_key`` (404 when none is set); the
    key's fingerprint, which names who did what in the log."""
    key = request.app.runtime.router.config.server.admin_key
    if not key:
        raise NotFound("the admin endpoints are off: set server.admin_key to enable them")
    check_client(request, (key,))
    return fingerprint(key)


async def metrics(request: Request) -> Reply:
    """Prometheus text format; needs the admin key unless server.metrics_public."""
    if not request.app.runtime.router.config.server.metrics_public:
        try:
            require_admin(request)
        except NotFound:
            raise NotFound(
                "metrics need server.admin_key, or server.metrics_public = true"
            ) from None
    body = request.app.metrics.render()
    return Reply(200, body, None, CONTENT_TYPE)


async def admin_accounts(request: Request) -> Reply:
    """Per-account state; protected by server.admin_key, and never shows a secret."""
    require_admin(request)
    router = request.app.runtime.router
    now = time.time()
    rows = router.pool.snapshot(now)
    env = router.config.env_proxies
    accounts = router.accounts
    for row in rows:
        acc = accounts.get(row["name"])
        if acc is not None:
            oauth = router.oauth.get(acc.name)
            url = acc.base_url or (oauth.base_url if oauth is not None else "")
            # How its calls go out: a proxy as http://host:port, never its credentials.
            row["proxy"] = describe(acc.proxy, env, url)
    # The server's clock, so that a page counts down from it, not from the browser's.
    return json_reply({"accounts": rows, "now": now}, indent=2)
