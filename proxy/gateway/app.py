"""The application: routes, start-up and shutdown (drain)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from functools import partial
from typing import Any

from aiohttp import web

from proxy.config import Config
from proxy.errors import UpstreamError
from proxy.gateway import messages, responses, routes, serving
from proxy.gateway.admin import account_action, admin_page, admin_streams, admin_usage
from proxy.gateway.appstate import APP, App
from proxy.gateway.forward import forward
from proxy.gateway.gate import Gate
from proxy.gateway.metrics import Metrics
from proxy.gateway.middleware import admit_client, dispatch, method_not_allowed, not_found
from proxy.gateway.ops import admin_accounts, healthz, metrics, readyz
from proxy.gateway.reply import Reply
from proxy.gateway.request import Handler, Request
from proxy.gateway.runtime import (
    auto_concurrent,
    build_runtime,
    open_file_limit,
    warn_readable_secrets,
)
from proxy.logs import debug_streaming_enabled, get_logger, redactor

__all__ = ["App", "Runner", "create_app", "drain", "start"]

log = get_logger("seamline")


class ShuttingDown(UpstreamError):
    """A stream still open when the drain deadline passed."""

    status = 503
    code = "server_shutting_down"


def proxy(request: Request) -> Awaitable[Reply]:
    """Forward one /v1 request to an upstream account and relay its answer.

    Not a coroutine itself: it checks, then hands over ``forward``'s, so an open stream
    holds one frame less."""
    rt = request.app.runtime
    admit_client(request)
    return forward(request, rt.router, request.outcome, debug_streaming_enabled(), rt.streams)


def client_route(handler: Handler) -> Handler:
    """``handler`` behind the client checks every /v1 route makes: its key, its rate."""

    def checked(request: Request) -> Awaitable[Reply]:
        admit_client(request)
        return handler(request)

    return checked


async def _expect_later(request: web.Request) -> None:
    """``Expect: 100-continue`` is answered when the body is first read
    (``Request.read``), once the request passed auth and limits; not here."""


# Every route's handler, by the route table's entries (routes.py says the rest).
# [\s\S], not ".": a path decoded to hold a line end must still reach the dispatch
# (which refuses it in OpenAI's format), not aiohttp's plain-text 404.
_ROUTES: tuple[tuple[str, tuple[str, ...], Handler], ...] = (
    (routes.RESPONSES.label, routes.RESPONSES.methods, client_route(responses.create)),
    (routes.STORED_RESPONSE.label, routes.STORED_RESPONSE.methods, client_route(responses.stored)),
    (routes.MESSAGES.label, routes.MESSAGES.methods, messages.anthropic_route(messages.create)),
    (
        routes.COUNT_TOKENS.label,
        routes.COUNT_TOKENS.methods,
        messages.anthropic_route(messages.tokens),
    ),
    (r"/v1/{tail:[\s\S]+}", ("GET", "POST"), proxy),
    *(
        (route.label, route.methods, handler)
        for route, handler in (
            (routes.HEALTHZ, healthz),
            (routes.READYZ, readyz),
            (routes.METRICS, metrics),
            (routes.ADMIN_ACCOUNTS, admin_accounts),
            (routes.ADMIN_PAGE, admin_page),
            (routes.ADMIN_STREAMS, admin_streams),
            (routes.ADMIN_USAGE, admin_usage),
            (routes.ADMIN_ACTION, account_action),
        )
    ),
)


# The Messages front answers every error in Anthropic's format, a wrong method too.
_OTHER_METHODS: dict[str, Handler] = {
    route.label: messages.anthropic_route(method_not_allowed)
    for route in (routes.MESSAGES, routes.COUNT_TOKENS)
}


def _routes(web_app: web.Application) -> None:
    """``_ROUTES`` in aiohttp's router, every answer through ``dispatch``; other methods
    on those paths get 405 and any other path 404, in OpenAI format."""

    def add(method: str, path: str, handler: Handler) -> None:
        web_app.router.add_route(
            method, path, partial(dispatch, handler=handler), expect_handler=_expect_later
        )

    for path, methods, handler in _ROUTES:
        for method in methods:
            add(method, path, handler)
        add("*", path, _OTHER_METHODS.get(path, method_not_allowed))
    add("*", r"/{tail:[\s\S]*}", not_found)


class Runner:
    """A started seamline: its aiohttp runner, its shared state, and how to stop it."""

    def __init__(self, app: App, runner: web.AppRunner) -> None:
        self.app = app
        self.runner = runner
        self._cleaned = False

    @property
    def addresses(self) -> list[Any]:
        return self.runner.addresses

    async def stop_listening(self) -> None:
        """Close the listening sockets; connections already open stay."""
        for site in list(self.runner.sites):
            await site.stop()

    async def cleanup(self) -> None:
        """Stop serving and release everything; a second call does nothing."""
        if self._cleaned:
            return
        self._cleaned = True
        await self.runner.cleanup()
        rt = self.app.runtime
        await rt.persister.stop()
        await rt.conversations.close()
        rt.connections.close()
        await rt.router.token_http.close()


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
    gate.on_done = app.book
    return app


def web_app(app: App) -> web.Application:
    """The aiohttp application serving ``app``."""
    server = app.runtime.router.config.server
    # ``client_max_size`` bounds what aiohttp's own body readers take; seamline's
    # (``Request.read``) applies server.max_body_bytes as a reload leaves it.
    out = web.Application(client_max_size=server.max_body_bytes)
    out[APP] = app
    _routes(out)
    return out


async def start(config: Config, host: str | None = None, port: int | None = None) -> Runner:
    """Start serving; the runner's ``addresses`` tell where. Used by the CLI and tests."""
    app = create_app(config)
    rt = app.runtime
    aio = serving.runner(web_app(app), config.server.keepalive_s, shutdown_timeout=2.0)
    runner = Runner(app, aio)
    try:
        await rt.persister.restore()
        rt.persister.start()
        warn_readable_secrets(rt.router.config)
        await aio.setup()
        site = web.TCPSite(
            aio,
            host or config.server.host,
            config.server.port if port is None else port,
            backlog=1024,
            reuse_address=True,
        )
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


async def _until(waiting: Awaitable[object], hurry: asyncio.Event | None) -> bool:
    """Wait for ``waiting`` or for ``hurry``; False when hurried."""
    done = asyncio.ensure_future(waiting)
    hurried = asyncio.ensure_future(hurry.wait()) if hurry is not None else None
    try:
        await asyncio.wait(
            [f for f in (done, hurried) if f is not None], return_when="FIRST_COMPLETED"
        )
    finally:
        for f in (done, hurried):
            if f is not None:
                f.cancel()
    return hurried is None or not hurried.done()


async def drain(
    runner: Runner,
    deadline: float | None = None,
    hurry: asyncio.Event | None = None,
    grace: float | None = None,
) -> None:
    """Drain, then shut down.

    Readiness goes off first: for ``server.drain_grace_s`` (``grace``) the listener
    stays open and ``/readyz`` answers 503, on new connections too, so that load
    balancers see the replica leave. Then the listener closes, requests in flight go on
    for ``server.drain_s`` (``deadline``), and the streams still open then get an error
    event. ``hurry`` (a second signal) cuts every wait short."""
    app = runner.app
    gate = app.gate
    rt = app.runtime
    server = rt.router.config.server
    gate.draining = True
    grace = server.drain_grace_s if grace is None else grace
    limit = server.drain_s if deadline is None else deadline
    log.info(
        "draining",
        in_flight=gate.in_flight,
        streams=len(rt.streams),
        grace_s=grace,
        deadline_s=limit,
    )
    hurried = grace > 0 and not await _until(asyncio.sleep(grace), hurry)
    await runner.stop_listening()
    if not hurried:
        await _until(gate.wait_idle(limit), hurry)
    if rt.streams:
        log.warning("drain_deadline_passed", streams=len(rt.streams))
        for resp in list(rt.streams):
            resp.fail(
                ShuttingDown("seamline is shutting down; the stream was ended before it completed")
            )
        await gate.wait_idle(2.0)
    await runner.cleanup()
