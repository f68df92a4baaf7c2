"""The /v1 handler: read the request, route it to an account, relay the answer."""

from __future__ import annotations

import json

from proxy.config import Config
from proxy.core.dialects.native_request import chat_to_responses_request
from proxy.core.dialects.responses_common import RequestError
from proxy.core.openai import normalize_error
from proxy.core.plan import Bodies, ClientRequest, inspect_body, plan_request
from proxy.gateway import native
from proxy.gateway.answer import make_answer
from proxy.gateway.attempt import FailedAnswer
from proxy.gateway.context import Call
from proxy.gateway.outcome import Outcome
from proxy.gateway.reply import Reply
from proxy.gateway.request import Request
from proxy.gateway.routes import api_route
from proxy.gateway.routing import Router
from proxy.logs import get_logger, redactor
from proxy.upstream.wire import Response

log = get_logger("seamline")


async def forward(
    request: Request, router: Router, outcome: Outcome, trace: bool, streams: set[Response]
) -> Reply:
    """Forward one /v1 request to an upstream account and relay its answer."""
    config = router.config
    route = api_route(request.path[4:])  # after "/v1/", decoded
    raw = await request.read(config.server.max_body_bytes)
    req = inspect_body(raw, route.needs_model) if request.method == "POST" else ClientRequest(raw)
    outcome.model, outcome.stream = req.model, req.stream
    model = router.model_for(req.model)
    force = any(a.force_stream for a in config.accounts)
    plan = plan_request(req, route.completion, model, force)
    call = Call(
        request.method,
        request.raw_path.removeprefix("/v1/"),
        request.query_string,
        request.headers,
        route,
        outcome,
        model,
        plan.wants(req.stream),
        plan.bodies,
        log.bind(request_id=outcome.request_id) if trace else None,
    )
    if route.scope == "chat" and req.obj is not None:
        _for_responses_accounts(call, config, req.obj)
    # A stream can live for minutes: keep nothing of the request body alive meanwhile
    # (``call`` lets go of it once the first byte has gone to the client).
    del raw, req, plan
    while True:
        answer = await router.open(call)
        if isinstance(answer, FailedAnswer):
            return failed_reply(answer, outcome)
        # This answer, relayed here rather than in a coroutine of its own: an open
        # stream holds one frame less (about 0.3 KiB).
        usage: tuple[int, int] | None = None
        early: tuple[int, bytes] | None = None
        completed = False
        streams.add(answer.response)
        try:
            make = native.chat_answer if native.speaks_responses(answer) else make_answer
            result, usage, early = await make(request, config, answer, call)
            completed = True
        finally:
            streams.discard(answer.response)
            if early is None:
                router.finish(answer, outcome, usage, completed)
        if early is None:
            return result
        # It failed before anything reached the client: another account may answer.
        failover = router.early_error(answer, early[0], early[1], outcome)
        if not (failover and router.may_retry(call)):
            return result
        outcome.error = None


def _for_responses_accounts(call: Call, config: Config, obj: dict[str, object]) -> None:
    """The chat request as a Responses request, for accounts that speak only that; when
    it cannot be one (``n`` > 1, ``stop``...), those accounts are left out."""
    names = native.responses_accounts(config)
    if not names:
        return
    try:
        made = chat_to_responses_request({**obj, "model": call.model})
    except RequestError:
        call.excluded = names
        return
    body = json.dumps(made.body, ensure_ascii=False, separators=(",", ":")).encode()
    call.native = Bodies(body, fingerprint=call.bodies.fingerprint if call.bodies else 0)


def failed_reply(answer: FailedAnswer, outcome: Outcome) -> Reply:
    """An upstream's error answer as the client gets it."""
    headers = answer.headers
    headers["X-Request-ID"] = outcome.request_id
    headers["Content-Type"] = "application/json"
    # Some upstreams echo the key they were sent; it must not reach the client.
    data = normalize_error(redactor.scrub_known(answer.body))
    outcome.answered(answer.status, len(data))
    return Reply(answer.status, data, headers)
