"""The request middleware: request id, limits, OpenAI-format errors, the summary line."""

from __future__ import annotations

import asyncio
import hmac
import os
import re
from urllib.parse import unquote_to_bytes

from aiohttp import web

from proxy.errors import (
    InvalidPath,
    MethodNotAllowed,
    NotFound,
    SeamlineError,
    Unauthorized,
)
from proxy.gateway.appstate import APP
from proxy.gateway.outcome import Outcome
from proxy.gateway.reply import Reply
from proxy.gateway.request import Handler, Request
from proxy.gateway.routes import route_of
from proxy.logs import get_logger

log = get_logger("seamline")
access_log = get_logger("seamline.request")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_DOT_SEGMENTS = frozenset({".", ".."})
# In an API path as the client sent it: a backslash or a ';' (path parameters), raw or
# encoded, or a double encoding (``%252e`` is ``%2e`` once decoded, a dot to a server
# that decodes twice). Servers and the proxies in front of them disagree on each.
_BAD_RAW_PATH = re.compile(r"\\|%5c|;|%3b|%25[0-9a-f]{2}", re.IGNORECASE)
CLIENT_CLOSED = 499


def check_api_path(raw_path: str) -> None:
    """400 for a /v1 path that could mean one thing here and another upstream; 404 for
    dot segments, which the upstream URL would resolve out of the account's base_url."""
    if _BAD_RAW_PATH.search(raw_path):
        raise InvalidPath("request path holds a backslash, ';' or a double encoding")
    # The server keeps raw bytes outside ASCII as surrogates: they go back to bytes here.
    decoded = unquote_to_bytes(raw_path.encode("utf-8", "surrogateescape"))
    try:
        text = decoded.decode("utf-8")  # strict: an overlong encoding is no UTF-8
    except UnicodeDecodeError:
        raise InvalidPath("request path is not valid UTF-8 once decoded") from None
    if any(c < " " or c == "\x7f" for c in text):
        raise InvalidPath("request path holds a control character")
    if _DOT_SEGMENTS.intersection(text.split("/")):
        raise NotFound("unknown path; seamline serves the OpenAI API under /v1")


def error_response(err: SeamlineError, request_id: str | None = None) -> Reply:
    headers = {"X-Request-ID": request_id} if request_id else {}
    if err.retry_after is not None:
        headers["Retry-After"] = str(max(1, int(err.retry_after + 0.999)))
    return Reply(err.status, err.json_bytes(), headers, "application/json")


async def dispatch(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, limits, OpenAI-format errors, one summary line per request.

    Every route's aiohttp handler is this, with its seamline ``handler`` bound (no
    aiohttp middleware: each would be one more coroutine frame for a stream's life)."""
    req = Request(request, request.app[APP])
    given = req.headers.get("X-Request-ID", "")
    request_id = given if _REQUEST_ID.match(given) else os.urandom(16).hex()
    path = req.path
    outcome = Outcome(request_id=request_id, route=path)
    req.outcome = outcome
    gate = req.app.gate
    api = path.startswith("/v1/")
    admitted = False
    try:
        if api:
            check_api_path(req.raw_path)
            gate.admit(req.content_length)
            admitted = True
            gate.enter()
        resp = await handler(req)
    except SeamlineError as err:
        resp = error_response(err, request_id)
        outcome.error = err.message
    except asyncio.CancelledError:
        # The client went away: still one line, still counted.
        outcome.client_gone = True
        _book(req, outcome, api)
        raise
    except ConnectionResetError as exc:
        # The client went away while its answer was being written (or read from it):
        # nobody to answer, and no bug to log.
        outcome.client_gone = True
        resp = error_response(SeamlineError(str(exc)), request_id)
    except Exception:
        log.exception("unhandled_error", request_id=request_id, path=path)
        internal = SeamlineError(f"internal error (request id {request_id})")
        resp = error_response(internal, request_id)
        outcome.error = "internal error"
    finally:
        if admitted:
            gate.leave()
    if not resp.prepared:
        resp.headers["X-Request-ID"] = request_id
    # Until here ``stream`` is what the client asked for; an error answer to a streamed
    # request is JSON, and its bytes are no stream bytes in the metrics or the log line.
    outcome.stream = outcome.stream and resp.content_type == "text/event-stream"
    outcome.status = outcome.status or resp.status
    _book(req, outcome, api)
    return req.answer(resp)


async def not_found(request: Request) -> Reply:
    """Any path no route serves."""
    raise NotFound("unknown path; seamline serves the OpenAI API under /v1")


async def method_not_allowed(request: Request) -> Reply:
    """A path served, with another method."""
    raise MethodNotAllowed("method not allowed for this path")


def _book(request: Request, outcome: Outcome, api: bool) -> None:
    """The summary line and the metrics of one finished request."""
    if outcome.client_gone:
        # Whatever status went out, the answer did not arrive whole (nginx's 499).
        outcome.status = CLIENT_CLOSED
    route = route_of(request.path)
    if not route.quiet:
        access_log.info("request", **outcome.summary())
    on_done = request.app.gate.on_done
    if api and on_done is not None:
        on_done(outcome, route.label)


def client_key(request: Request) -> str:
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get("x-api-key", "")


def check_client(request: Request, keys: tuple[str, ...]) -> None:
    """401 unless the request carries one of ``keys`` (when any are configured)."""
    if not keys:
        return
    # The header was read as latin-1: this is the client's bytes, whatever they encode.
    given = client_key(request).encode("latin-1", "replace")
    ok = False
    for key in keys:  # compare with every key, so timing says nothing about which
        ok |= hmac.compare_digest(given, key.encode())
    if not ok:
        raise Unauthorized("missing or invalid API key for this proxy")
