"""The aiohttp application: routes, start-up and shutdown (drain), and reload."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from aiohttp import web

from . import upstream as up
from .config import Config
from .errors import UpstreamError
from .forward import forward
from .logs import debug_streaming_enabled, get_logger, redactor
from .metrics import Metrics
from .middleware import GATE, OUTCOME, Gate, check_client, request_middleware
from .ops import METRICS, admin_accounts, healthz, metrics, readyz
from .runtime import RUNTIME, build_runtime, warn_readable_secrets

__all__ = ["RUNTIME", "SESSION", "create_app", "drain", "start"]

SESSION = web.AppKey("session", aiohttp.ClientSession)
log = get_logger("seamline")


class ShuttingDown(UpstreamError):
    """A stream still open when the drain deadline passed."""

    status = 503
    code = "server_shutting_down"


async def proxy(request: web.Request) -> web.StreamResponse:
    """Forward one /v1 request to an upstream account and relay its answer."""
    rt = request.app[RUNTIME]
    check_client(request, rt.router.config.server.api_keys)
    request.app[GATE].rate(request)
    return await forward(
        request,
        rt.router,
        request.app[SESSION],
        rt.client,
        request[OUTCOME],
        debug_streaming_enabled(),
        rt.streams,
    )


async def _lifecycle(app: web.Application) -> Any:
    app[SESSION] = up.make_session()
    rt = app[RUNTIME]
    await rt.persister.restore()
    rt.persister.start()
    warn_readable_secrets(rt.router.config)
    yield
    await rt.persister.stop()
    rt.client.close()
    await app[SESSION].close()


def create_app(config: Config) -> web.Application:
    """Build the application for ``config``."""
    redactor.set_secrets(config.secrets())
    app = web.Application(
        middlewares=[request_middleware],
        client_max_size=config.server.max_body_bytes,
    )
    rt = build_runtime(config)
    app[RUNTIME] = rt
    app[METRICS] = m = Metrics(lambda: app[RUNTIME].router.pool)
    m.in_flight.set_function(lambda: len(app[RUNTIME].streams))
    app[GATE] = Gate(server=lambda: app[RUNTIME].router.config.server, on_done=m.record)
    app.cleanup_ctx.append(_lifecycle)
    app.router.add_route("POST", "/v1/{tail:.+}", proxy)
    app.router.add_route("GET", "/v1/{tail:.+}", proxy)
    # HEAD too: load balancers' health checks often use it.
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_route("GET", "/metrics", metrics)
    app.router.add_route("GET", "/admin/accounts", admin_accounts)
    return app


async def start(config: Config, host: str | None = None, port: int | None = None) -> web.AppRunner:
    """Start serving; the runner's ``addresses`` tell where. Used by the CLI and tests."""
    app = create_app(config)
    # Cancel the handler when its client disconnects, so an upstream that is silent
    # (a long reasoning pause) is still closed at once rather than at its next byte.
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(
        runner, host or config.server.host, config.server.port if port is None else port
    )
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


async def drain(
    runner: web.AppRunner, deadline: float | None = None, hurry: asyncio.Event | None = None
) -> None:
    """Stop accepting, let requests in flight finish within ``server.drain_s`` (or until
    ``hurry`` is set: a second signal), end the streams still open then with an error
    event, and shut down."""
    app = runner.app
    assert isinstance(app, web.Application)
    gate = app[GATE]
    rt = app[RUNTIME]
    gate.draining = True
    for site in list(runner.sites):
        await site.stop()
    limit = rt.router.config.server.drain_s if deadline is None else deadline
    log.info("draining", in_flight=gate.in_flight, streams=len(rt.streams), deadline_s=limit)
    waiting = asyncio.ensure_future(gate.wait_idle(limit))
    hurried = asyncio.ensure_future(hurry.wait()) if hurry is not None else None
    await asyncio.wait(
        [f for f in (waiting, hurried) if f is not None], return_when="FIRST_COMPLETED"
    )
    for f in (waiting, hurried):
        if f is not None:
            f.cancel()
    if rt.streams:
        log.warning("drain_deadline_passed", streams=len(rt.streams))
        for resp in list(rt.streams):
            resp.fail(
                ShuttingDown("seamline is shutting down; the stream was ended before it completed")
            )
        await gate.wait_idle(2.0)
    await runner.cleanup()
