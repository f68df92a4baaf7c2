"""The /v1 handler: read the request, route it to an account, relay the answer."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from .errors import BodyTooLarge, InvalidJSON, MissingModel
from .logs import get_logger, redactor
from .relay import Outcome, read_body, relay_stream
from .repair import OpenAIShaper, normalize_error, usage_of
from .routing import FailedAnswer, Router, UpstreamAnswer
from .upstream import response_headers

log = get_logger("seamline")

# Routes whose streams are chat/text completions: OpenAI profile with ending checks.
COMPLETION_ROUTES = frozenset({"chat/completions", "completions"})
_MODEL_ROUTES = frozenset({"chat/completions", "completions", "embeddings"})


@dataclass(frozen=True, slots=True)
class ClientRequest:
    """What seamline needs to know about the client's request body."""

    body: bytes
    model: str | None = None
    stream: bool = False
    obj: dict[str, Any] | None = None


def inspect_body(route: str, body: bytes) -> ClientRequest:
    """Parse the body enough to route it; model routes must carry a JSON ``model``."""
    try:
        obj = json.loads(body) if body else None
    except ValueError as exc:
        if route in _MODEL_ROUTES:
            raise InvalidJSON(f"request body is not valid JSON: {exc}") from None
        return ClientRequest(body)
    if not isinstance(obj, dict):
        if route in _MODEL_ROUTES:
            raise InvalidJSON("request body must be a JSON object")
        return ClientRequest(body)
    model = obj.get("model")
    if route in _MODEL_ROUTES and (not isinstance(model, str) or not model):
        raise MissingModel("you must provide a model parameter")
    return ClientRequest(
        body, model if isinstance(model, str) else None, obj.get("stream") is True, obj
    )


def upstream_body(route: str, req: ClientRequest, upstream_model: str | None) -> tuple[bytes, bool]:
    """The body to send upstream, and whether the client's stream must lose a usage chunk.

    The client's bytes go upstream untouched unless a model alias applies or the
    usage chunk has to be asked for (so that every stream can be accounted).
    """
    obj = req.obj
    if obj is None or route not in COMPLETION_ROUTES:
        return req.body, False
    changes: dict[str, Any] = {}
    if upstream_model is not None and upstream_model != req.model:
        changes["model"] = upstream_model
    strip_usage = False
    if req.stream:
        options = obj.get("stream_options")
        if not isinstance(options, dict) or options.get("include_usage") is not True:
            changes["stream_options"] = {
                **(options if isinstance(options, dict) else {}),
                "include_usage": True,
            }
            strip_usage = True
    if not changes:
        return req.body, False
    new = json.dumps({**obj, **changes}, ensure_ascii=False, separators=(",", ":"))
    return new.encode(), strip_usage


async def forward(
    request: web.Request,
    router: Router,
    session: aiohttp.ClientSession,
    outcome: Outcome,
    trace: bool,
) -> web.StreamResponse:
    """Forward one /v1 request to an upstream account and relay its answer."""
    config = router.config
    tail = request.match_info["tail"]
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BodyTooLarge(f"request body exceeds {config.server.max_body_bytes} bytes") from None
    req = inspect_body(tail, raw) if request.method == "POST" else ClientRequest(raw)
    outcome.model, outcome.stream = req.model, req.stream
    model = router.model_for(req.model)
    body, strip_usage = upstream_body(tail, req, model)
    answer = await router.open(
        session,
        request.method,
        tail,
        request.query_string,
        request.headers,
        (body, raw),
        model,
        outcome,
    )
    if isinstance(answer, FailedAnswer):
        return _failed(answer, outcome)
    return await _relay(request, router, answer, outcome, tail, strip_usage, trace)


def _failed(answer: FailedAnswer, outcome: Outcome) -> web.Response:
    headers = answer.headers
    headers["X-Request-ID"] = outcome.request_id
    headers["Content-Type"] = "application/json"
    # Some upstreams echo the key they were sent; it must not reach the client.
    data = normalize_error(redactor.scrub_known(answer.body))
    outcome.status = answer.status
    outcome.bytes_out = len(data)
    return web.Response(status=answer.status, body=data, headers=headers)


async def _relay(
    request: web.Request,
    router: Router,
    answer: UpstreamAnswer,
    outcome: Outcome,
    tail: str,
    strip_usage: bool,
    trace: bool,
) -> web.StreamResponse:
    config = router.config
    resp = answer.response
    timeouts = config.timeouts_for(answer.account)
    out_headers: CIMultiDict[str] = _response_headers(resp, outcome)
    usage: tuple[int, int] | None = None
    try:
        if resp.headers.get("Content-Type", "").startswith("text/event-stream"):
            outcome.stream = True
            shaper = OpenAIShaper(
                keep_event_names=tail not in COMPLETION_ROUTES,
                check_endings=tail in COMPLETION_ROUTES,
                strip_usage=strip_usage,
            )
            tracer = log.bind(request_id=outcome.request_id) if trace else None
            try:
                return await relay_stream(
                    request,
                    resp,
                    out_headers,
                    shaper,
                    outcome,
                    timeouts=timeouts,
                    max_event_bytes=config.server.max_event_bytes,
                    log=tracer,
                )
            finally:
                usage = shaper.usage
        data = await read_body(resp, config.server.max_event_bytes * 8, timeouts)
        usage = usage_of(data)
        outcome.status = resp.status
        outcome.first_byte = time.monotonic()
        outcome.bytes_out = len(data)
        return web.Response(status=resp.status, body=data, headers=out_headers)
    finally:
        broken = outcome.error if not outcome.client_gone else None
        router.finish(answer, outcome, usage, broken)


def _response_headers(resp: aiohttp.ClientResponse, outcome: Outcome) -> CIMultiDict[str]:
    headers = response_headers(resp.headers)
    headers["X-Request-ID"] = outcome.request_id
    return headers
