"""The application: routes, start-up and shutdown (drain)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from functools import partial
from typing import Any

import aiohttp

from . import upstream as up
from .config import Config
from .errors import UpstreamError
from .forward import forward
from .logs import debug_streaming_enabled, get_logger, redactor
from .metrics import Metrics
from .middleware import Gate, check_client, dispatch
from .ops import admin_accounts, healthz, metrics, readyz
from .request import Handler, Reply, Request
from .runtime import (
    Runtime,
    auto_concurrent,
    build_runtime,
    open_file_limit,
    warn_readable_secrets,
)
from .server import Server

__all__ = ["App", "Runner", "create_app", "drain", "start"]

log = get_logger("seamline")


class ShuttingDown(UpstreamError):
    """A stream still open when the drain deadline passed."""

    status = 503
    code = "server_shutting_down"


@dataclass
class App:
    """What the handlers share: the runtime (swapped by a reload), admission, metrics."""

    runtime: Runtime
    gate: Gate
    metrics: Metrics
    session: aiohttp.ClientSession | None = None  # OAuth token calls only


def proxy(request: Request) -> Awaitable[Reply]:
    """Forward one /v1 request to an upstream account and relay its answer.

    Not a coroutine itself: it checks, then hands over ``forward``'s, so an open stream
    holds one frame less."""
    app = request.app
    rt = app.runtime
    check_client(request, rt.router.config.server.api_keys)
    app.gate.rate(request)
    assert app.session is not None
    return forward(
        request,
        rt.router,
        app.session,
        rt.client,
        request.outcome,
        debug_streaming_enabled(),
        rt.streams,
    )


# Exact paths besides /v1/...; HEAD as well as GET where load balancers probe.
_ROUTES: dict[str, tuple[frozenset[str], Handler]] = {
    "/healthz": (frozenset({"GET", "HEAD"}), healthz),
    "/readyz": (frozenset({"GET", "HEAD"}), readyz),
    "/metrics": (frozenset({"GET"}), metrics),
    "/admin/accounts": (frozenset({"GET"}), admin_accounts),
}
_API = (frozenset({"GET", "POST"}), proxy)


def route(path: str) -> tuple[frozenset[str], Handler] | None:
    """The methods and handler for ``path``, or None: unknown."""
    if path.startswith("/v1/") and len(path) > 4:
        return _API
    return _ROUTES.get(path)


class Runner:
    """A started seamline: its server, its shared state, and how to stop it."""

    def __init__(self, app: App, server: Server) -> None:
        self.app = app
        self.server = server
        self._cleaned = False

    @property
    def addresses(self) -> list[Any]:
        return self.server.addresses

    async def cleanup(self) -> None:
        """Stop serving and release everything; a second call does nothing."""
        if self._cleaned:
            return
        self._cleaned = True
        await self.server.shutdown(5.0)
        rt = self.app.runtime
        await rt.persister.stop()
        rt.client.close()
        if self.app.session is not None:
            await self.app.session.close()


def create_app(config: Config) -> App:
    """The shared state for ``config``, before anything is started."""
    redactor.set_secrets(config.secrets())
    rt = build_runtime(config)
    gate = Gate(
        server=lambda: app.runtime.router.config.server,
        auto_concurrent=auto_concurrent(open_file_limit()),
    )
    app = App(rt, gate, Metrics(lambda: app.runtime.router.pool))
    app.metrics.in_flight.set_function(lambda: len(app.runtime.streams))
    gate.on_done = app.metrics.record
    return app


async def start(config: Config, host: str | None = None, port: int | None = None) -> Runner:
    """Start serving; the runner's ``addresses`` tell where. Used by the CLI and tests."""
    app = create_app(config)
    app.session = up.make_session()
    rt = app.runtime
    server = Server(
        app,
        partial(dispatch, route),
        lambda: app.runtime.router.config.server.max_body_bytes,
        _unhandled,
    )
    runner = Runner(app, server)
    try:
        await rt.persister.restore()
        rt.persister.start()
        warn_readable_secrets(rt.router.config)
        await server.listen(
            host or config.server.host, config.server.port if port is None else port
        )
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def _unhandled(event: str, request: Request) -> None:
    log.exception(event, path=request.path)


async def drain(
    runner: Runner, deadline: float | None = None, hurry: asyncio.Event | None = None
) -> None:
    """Stop accepting, let requests in flight finish within ``server.drain_s`` (or until
    ``hurry`` is set: a second signal), end the streams still open then with an error
    event, and shut down."""
    app = runner.app
    gate = app.gate
    rt = app.runtime
    gate.draining = True
    await runner.server.stop_listening()
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
