"""Operator endpoints: liveness, readiness, Prometheus metrics, the account table."""

from __future__ import annotations

import json
import time

from aiohttp import web

from .errors import NotFound
from .metrics import CONTENT_TYPE, Metrics
from .middleware import GATE, check_client
from .runtime import RUNTIME

METRICS = web.AppKey("metrics", Metrics)


async def healthz(request: web.Request) -> web.StreamResponse:
    """The process is alive and serving."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.StreamResponse:
    """503 while draining or when no account can take a request right now.

    With replicas, ``shared_state`` tells whether Redis is reachable.
    """
    gate = request.app[GATE]
    pool = request.app[RUNTIME].router.pool
    now = time.time()
    eligible = [name for name, st in pool.states.items() if pool.block(st, now) is None]
    body = {
        "status": "ready",
        "draining": gate.draining,
        "accounts_available": len(eligible),
        "accounts_total": len(pool.states),
        "in_flight": gate.in_flight,
    }
    shared = request.app[RUNTIME].shared
    if shared is not None:
        # Not a reason to be unready: without Redis this replica decides on its own view.
        body["shared_state"] = shared.link.status()
    if gate.draining or not eligible:
        body["status"] = "draining" if gate.draining else "no_account_available"
        return web.json_response(body, status=503)
    return web.json_response(body)


def _admin(request: web.Request) -> None:
    key = request.app[RUNTIME].router.config.server.admin_key
    if not key:
        raise NotFound("the admin endpoints are off: set server.admin_key to enable them")
    check_client(request, (key,))


async def metrics(request: web.Request) -> web.StreamResponse:
    """Prometheus text format; needs the admin key unless server.metrics_public."""
    if not request.app[RUNTIME].router.config.server.metrics_public:
        try:
            _admin(request)
        except NotFound:
            raise NotFound(
                "metrics need server.admin_key, or server.metrics_public = true"
            ) from None
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def admin_accounts(request: web.Request) -> web.StreamResponse:
    """Per-account state; protected by server.admin_key, and never shows a secret."""
    _admin(request)
    body = {"accounts": request.app[RUNTIME].router.pool.snapshot(time.time())}
    return web.json_response(body, dumps=lambda o: json.dumps(o, indent=2))
