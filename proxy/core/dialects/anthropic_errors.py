"""Anthropic's error objects: the status <-> type map, the body builder, a typed error.

The one owner of the Anthropic error format, for both directions: a Messages client is
answered in it, and an Anthropic account's errors are read through it.
"""

from __future__ import annotations

import json
from typing import Any

from proxy.core.openai import error_status, normalize_error

# Anthropic's documented error types by HTTP status (its "HTTP errors" page; 402 and 504
# are the newer entries of it).
TYPE_BY_STATUS: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
STATUS_BY_TYPE: dict[str, int] = {kind: status for status, kind in TYPE_BY_STATUS.items()}


def error_type(status: int) -> str:
    """The Anthropic error type a status is answered with: the documented one, else the
    one of its class (``invalid_request_error`` for other 4xx, ``api_error`` for 5xx)."""
    if status in TYPE_BY_STATUS:
        return TYPE_BY_STATUS[status]
    if status == 503:
        # An overloaded upstream says so with 503 as often as with Anthropic's own 529.
        return "overloaded_error"
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def status_of(kind: str) -> int:
    """The HTTP status of an Anthropic error type; unknown types are a 500."""
    return STATUS_BY_TYPE.get(kind, 500)


def error_body(kind: str, message: str) -> dict[str, Any]:
    """An Anthropic error object: ``{"type": "error", "error": {"type": ..., "message": ...}}``."""
    return {"type": "error", "error": {"type": kind, "message": message}}


class AnthropicError(Exception):
    """An error answered in Anthropic's format: its status and its body."""

    def __init__(self, message: str, status: int = 400, kind: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.kind = kind or error_type(status)

    def body(self) -> dict[str, Any]:
        return error_body(self.kind, self.message)

    def json_bytes(self) -> bytes:
        return json.dumps(self.body(), ensure_ascii=False).encode()


def invalid(message: str) -> AnthropicError:
    """The request is wrong: a 400 ``invalid_request_error``."""
    return AnthropicError(message, 400)


def from_openai(payload: bytes, status: int | None = None) -> AnthropicError:
    """An upstream's error (OpenAI's shape, or any the chat route can read) as Anthropic's.

    ``status`` is the upstream's HTTP status when there was one; a 200 stream's error
    event has none, and its status is the one its words name (as for the chat route).
    The message keeps the upstream's words.
    """
    normal = json.loads(normalize_error(payload))
    message = str(normal["error"].get("message") or "upstream error")
    if status is None or status < 400:
        status = error_status(payload)
    return AnthropicError(message, status)


def to_openai(payload: bytes, status: int | None = None) -> tuple[int, bytes]:
    """An Anthropic error body (or event data) as an OpenAI error: its status and JSON.

    The Anthropic type is kept as the OpenAI ``type``, which seamline's own reading of
    errors (``repair.error_status``) maps back to the same status.
    """
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):
        obj = None
    err = obj.get("error") if isinstance(obj, dict) else None
    if not isinstance(err, dict):
        normal = json.loads(normalize_error(payload))
        return status or error_status(payload), json.dumps(normal).encode()
    kind = err.get("type") if isinstance(err.get("type"), str) else "api_error"
    message = err.get("message") if isinstance(err.get("message"), str) else ""
    if status is None or status < 400:
        status = status_of(str(kind)) if kind in STATUS_BY_TYPE else error_status(payload)
    body = {"message": message or str(kind), "type": kind, "param": None, "code": None}
    return status, json.dumps({"error": body}, ensure_ascii=False).encode()
