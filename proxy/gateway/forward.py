"""The /v1 handler: read the request, route it to an account, relay the answer."""

from __future__ import annotations

import json

from proxy.config import Config
from proxy.core.dialects.anthropic_reverse import ChatRequestError, to_messages
from proxy.core.dialects.native_request import chat_to_responses_request
from proxy.core.dialects.responses_common import RequestError
from proxy.core.plan import Bodies, ClientRequest, inspect_body, plan_request
from proxy.gateway import anthropic_accounts, native
from proxy.gateway.answer import failed_reply, make_answer
from proxy.gateway.attempt import FailedAnswer
from proxy.gateway.context import Call
from proxy.gateway.outcome import Outcome
from proxy.gateway.reply import Reply
from proxy.gateway.request import Request
from proxy.gateway.routes import api_route
from proxy.gateway.routing import Router
from proxy.logs import get_logger
from proxy.upstream.wire import Response

log = get_logger("seamline")


async def forward(
    request: Request,
    router: Router,
    outcome: Outcome,
    trace: bool,
    streams: dict[Response, Outcome],
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
        _for_messages_accounts(call, config, req.obj)
    elif route.scope == "completions":
        call.excluded = anthropic_accounts.messages_accounts(config)
    # A stream can live for minutes: keep nothing of the request body alive meanwhile
    # (``call`` lets go of it once the first byte has gone to the client).
    del raw, req, plan
    while True:
        answer = await router.open(call)
        if isinstance(answer, FailedAnswer):
            return failed_reply(answer, outcome)
        # ``fronts.route``'s loop, written out: relaying this answer in a coroutine of
        # its own would hold one more frame for each stream's life (about 0.3 KiB).
        usage: tuple[int, int] | None = None
        early: tuple[int, bytes] | None = None
        completed = False
        streams[answer.response] = outcome
        try:
            make = make_answer
            if native.speaks_responses(answer):
                make = native.chat_answer
            elif anthropic_accounts.speaks_messages(answer):
                make = anthropic_accounts.chat_answer
            result, usage, early = await make(request, config, answer, call)
            completed = True
        finally:
            streams.pop(answer.response, None)
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
        call.excluded = (*call.excluded, *names)
        return
    body = json.dumps(made.body, ensure_ascii=False, separators=(",", ":")).encode()
    call.native = Bodies(body, fingerprint=call.bodies.fingerprint if call.bodies else 0)


def _for_messages_accounts(call: Call, config: Config, obj: dict[str, object]) -> None:
    """The chat request as an Anthropic Messages request, for Anthropic accounts; when
    it cannot be one (``n`` > 1), those accounts are left out."""
    names = anthropic_accounts.messages_accounts(config)
    if not names:
        return
    try:
        made = to_messages({**obj, "model": call.model})
    except ChatRequestError:
        call.excluded = (*call.excluded, *names)
        return
    body = json.dumps(made.body, ensure_ascii=False, separators=(",", ":")).encode()
    call.messages = Bodies(body, fingerprint=call.bodies.fingerprint if call.bodies else 0)
