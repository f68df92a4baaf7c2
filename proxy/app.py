"""The aiohttp application: routes, middlewares, and the glue between the parts."""

from __future__ import annotations

import hmac
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from . import upstream as up
from .config import AccountConfig, Config
from .errors import (
    BodyTooLarge,
    InvalidJSON,
    MethodNotAllowed,
    MissingModel,
    NotFound,
    SeamlineError,
    Unauthorized,
)
from .logs import debug_streaming_enabled, get_logger, redactor
from .relay import Outcome, read_body, relay_stream
from .repair import OpenAIShaper, normalize_error

CONFIG = web.AppKey("config", Config)
SESSION = web.AppKey("session", aiohttp.ClientSession)
OUTCOME = web.RequestKey("outcome", Outcome)

log = get_logger("seamline")
access_log = get_logger("seamline.request")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Routes whose streams are chat/text completions: OpenAI profile with ending checks.
_COMPLETION_ROUTES = frozenset({"chat/completions", "completions"})
_MODEL_ROUTES = frozenset({"chat/completions", "completions", "embeddings"})

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


def _inspect_body(route: str, body: bytes) -> tuple[str | None, bool]:
    """The request's model and whether it asks for a stream; validates model routes."""
    if route not in _MODEL_ROUTES:
        try:
            obj = json.loads(body) if body else None
        except ValueError:
            return None, False
        if isinstance(obj, dict):
            model = obj.get("model")
            return (model if isinstance(model, str) else None), obj.get("stream") is True
        return None, False
    try:
        obj = json.loads(body)
    except ValueError as exc:
        raise InvalidJSON(f"request body is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidJSON("request body must be a JSON object")
    model = obj.get("model")
    if not isinstance(model, str) or not model:
        raise MissingModel("you must provide a model parameter")
    return model, obj.get("stream") is True


def pick_account(config: Config, model: str | None) -> AccountConfig:
    return config.accounts[0]


async def proxy(request: web.Request) -> web.StreamResponse:
    """Forward one /v1 request to an upstream account and relay its answer."""
    app = request.app
    config = app[CONFIG]
    outcome: Outcome = request[OUTCOME]
    check_client(request, config.server.api_keys)
    tail = request.match_info["tail"]
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BodyTooLarge(f"request body exceeds {config.server.max_body_bytes} bytes") from None
    model, stream = _inspect_body(tail, body) if request.method == "POST" else (None, False)
    outcome.model, outcome.stream = model, stream
    account = pick_account(config, model)
    outcome.account = account.name
    headers = up.request_headers(request.headers, account, outcome.request_id)
    url = up.target_url(account, tail, request.query_string)
    resp = await up.send(app[SESSION], account, request.method, url, headers, body, config.timeouts)
    out_headers = up.response_headers(resp.headers)
    out_headers["X-Request-ID"] = outcome.request_id
    ctype = resp.headers.get("Content-Type", "")
    if resp.status < 400 and ctype.startswith("text/event-stream"):
        outcome.stream = True
        shaper = OpenAIShaper(
            keep_event_names=tail not in _COMPLETION_ROUTES,
            check_endings=tail in _COMPLETION_ROUTES,
        )
        trace = log.bind(request_id=outcome.request_id) if debug_streaming_enabled() else None
        return await relay_stream(
            request,
            resp,
            out_headers,
            shaper,
            outcome,
            timeouts=config.timeouts,
            max_event_bytes=config.server.max_event_bytes,
            log=trace,
        )
    data = await read_body(resp, config.server.max_event_bytes * 8, config.timeouts)
    if resp.status >= 400:
        # Some upstreams echo the key they were sent; it must not reach the client.
        data = normalize_error(redactor.scrub_known(data))
        out_headers["Content-Type"] = "application/json"
    outcome.status = resp.status
    outcome.first_byte = time.monotonic()
    outcome.bytes_out = len(data)
    return web.Response(status=resp.status, body=data, headers=out_headers)


async def _session_ctx(app: web.Application) -> Any:
    app[SESSION] = up.make_session()
    yield
    await app[SESSION].close()


def create_app(config: Config) -> web.Application:
    """Build the application for ``config``."""
    redactor.set_secrets(config.secrets())
    app = web.Application(
        middlewares=[request_middleware],
        client_max_size=config.server.max_body_bytes,
    )
    app[CONFIG] = config
    app.cleanup_ctx.append(_session_ctx)
    app.router.add_route("POST", "/v1/{tail:.+}", proxy)
    app.router.add_route("GET", "/v1/{tail:.+}", proxy)
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
