"""The aiohttp application: routes, middlewares, and the glue between the parts."""

from __future__ import annotations

import hmac
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from . import upstream as up
from .config import Config
from .errors import BodyTooLarge, MethodNotAllowed, NotFound, SeamlineError, Unauthorized
from .forward import forward
from .logs import debug_streaming_enabled, get_logger, redactor
from .oauth import DEFAULT_CLIENT_ID, DEFAULT_TOKEN_URL, OAuthAccount
from .outcome import Outcome
from .routing import Router, make_pool
from .state import Persister, open_store

SESSION = web.AppKey("session", aiohttp.ClientSession)
OUTCOME = web.RequestKey("outcome", Outcome)

log = get_logger("seamline")
access_log = get_logger("seamline.request")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(err: SeamlineError, request_id: str | None = None) -> web.Response:
    headers = {"X-Request-ID": request_id} if request_id else {}
    if err.retry_after is not None:
        headers["Retry-After"] = str(max(1, int(err.retry_after + 0.999)))
    return web.Response(
        status=err.status,
        body=err.json_bytes(),
        content_type="application/json",
        headers=headers,
    )


@web.middleware
async def request_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, OpenAI-format errors for everything, and one summary line per request."""
    given = request.headers.get("X-Request-ID", "")
    request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
    outcome = Outcome(request_id=request_id, route=request.path)
    request[OUTCOME] = outcome
    try:
        resp = await handler(request)
    except SeamlineError as err:
        resp = error_response(err, request_id)
        outcome.error = err.message
    except web.HTTPException as exc:
        resp = error_response(_from_http_exception(exc), request_id)
    except Exception:
        log.exception("unhandled_error", request_id=request_id, path=request.path)
        internal = SeamlineError(f"internal error (request id {request_id})")
        resp = error_response(internal, request_id)
        outcome.error = "internal error"
    if not resp.prepared:
        resp.headers["X-Request-ID"] = request_id
    outcome.status = outcome.status or resp.status
    access_log.info("request", **outcome.summary())
    return resp


def _from_http_exception(exc: web.HTTPException) -> SeamlineError:
    if exc.status == 404:
        return NotFound("unknown path; seamline serves the OpenAI API under /v1")
    if exc.status == 405:
        return MethodNotAllowed("method not allowed for this path")
    if exc.status == 413:
        return BodyTooLarge("request body is too large")
    err = SeamlineError(exc.reason or "request failed")
    err.status = exc.status
    err.error_type = "invalid_request_error" if exc.status < 500 else "server_error"
    return err


def _client_key(request: web.Request) -> str:
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get("x-api-key", "")


def check_client(request: web.Request, keys: tuple[str, ...]) -> None:
    """401 unless the request carries one of ``keys`` (when any are configured)."""
    if not keys:
        return
    given = _client_key(request).encode()
    ok = False
    for key in keys:  # compare with every key, so timing says nothing about which
        ok |= hmac.compare_digest(given, key.encode())
    if not ok:
        raise Unauthorized("missing or invalid API key for this proxy")


@dataclass
class Runtime:
    """What the handlers use; swapped as a whole when the config is reloaded."""

    router: Router
    persister: Persister


RUNTIME = web.AppKey("runtime", Runtime)


def build_runtime(config: Config) -> Runtime:
    pool = make_pool(config)
    router = Router(config, pool, oauth_accounts(config))
    return Runtime(router, Persister(pool, open_store(config.state_path)))


def oauth_accounts(config: Config) -> dict[str, OAuthAccount]:
    return {
        acc.name: OAuthAccount(
            acc.name,
            acc.credentials,
            token_url=acc.token_url or DEFAULT_TOKEN_URL,
            client_id=acc.client_id or DEFAULT_CLIENT_ID,
        )
        for acc in config.accounts
        if acc.kind == "qwen-oauth"
    }


async def proxy(request: web.Request) -> web.StreamResponse:
    """Forward one /v1 request to an upstream account and relay its answer."""
    rt = request.app[RUNTIME]
    check_client(request, rt.router.config.server.api_keys)
    return await forward(
        request, rt.router, request.app[SESSION], request[OUTCOME], debug_streaming_enabled()
    )


async def admin_accounts(request: web.Request) -> web.StreamResponse:
    """Per-account state; protected by server.admin_key, and never shows a secret."""
    rt = request.app[RUNTIME]
    key = rt.router.config.server.admin_key
    if not key:
        raise NotFound("the admin endpoints are off: set server.admin_key to enable them")
    check_client(request, (key,))
    body = {"accounts": rt.router.pool.snapshot(time.time())}
    return web.json_response(body, dumps=lambda o: json.dumps(o, indent=2))


async def _session_ctx(app: web.Application) -> Any:
    app[SESSION] = up.make_session()
    rt = app[RUNTIME]
    await rt.persister.restore()
    rt.persister.start()
    yield
    await rt.persister.stop()
    await app[SESSION].close()


def create_app(config: Config) -> web.Application:
    """Build the application for ``config``."""
    redactor.set_secrets(config.secrets())
    app = web.Application(
        middlewares=[request_middleware],
        client_max_size=config.server.max_body_bytes,
    )
    app[RUNTIME] = build_runtime(config)
    app.cleanup_ctx.append(_session_ctx)
    app.router.add_route("POST", "/v1/{tail:.+}", proxy)
    app.router.add_route("GET", "/v1/{tail:.+}", proxy)
    app.router.add_route("GET", "/admin/accounts", admin_accounts)
    return app


async def start(config: Config, host: str | None = None, port: int | None = None) -> web.AppRunner:
    """Start serving; the runner's ``addresses`` tell where. Used by the CLI and tests."""
    app = create_app(config)
    # Cancel the handler when its client disconnects, so an upstream that is silent
    # (a long reasoning pause) is still closed at once rather than at its next byte.
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
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
