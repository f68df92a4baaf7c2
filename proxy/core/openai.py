"""OpenAI's vocabulary, as bytes and dicts: error objects made, recognised, mapped to a
status by what they say; [DONE]; the usage chunk. Pure."""

from __future__ import annotations

import json
from typing import Any

from proxy.core.sse import Event, Reframer, looks_like_sse
from proxy.errors import openai_error

DONE = b"[DONE]"
DONE_EVENT = b"data: [DONE]\n\n"
TRUNCATED = "upstream stream ended before the answer was complete (truncated: no finish_reason)"


def error_json(message: str, error_type: str = "upstream_error", code: str | None = None) -> bytes:
    """An OpenAI error object as JSON bytes, shaped as seamline's own errors are."""
    return json.dumps(openai_error(message, error_type, code)).encode()


def error_event(message: str, error_type: str = "upstream_error", code: str | None = None) -> bytes:
    """An SSE block that both openai-python and openai-node raise as an API error."""
    return b"data: " + error_json(message, error_type, code) + b"\n\n"


# An upstream's error text longer than this is cut (an HTML page, a stack dump): the
# words that say what went wrong come first.
_MESSAGE_LIMIT = 16 * 1024


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _first_event(payload: bytes) -> bytes | None:
    """The data of the first event of an error body framed as an event stream."""
    reframer = Reframer(len(payload) + 1)
    for item in [*reframer.feed(payload), *reframer.close()]:
        if isinstance(item, Event) and item.data and item.data.strip():
            return item.data.strip()
    return None


def normalize_error(payload: bytes) -> bytes:
    """Make an upstream error payload an OpenAI ``{"error": {...}}`` object.

    An object whose ``error`` is already one (with a message) passes untouched; any
    other object or text becomes a new one that keeps the upstream's words (both parts
    of ``{"error": "TypeError", "message": "..."}``), its ``code``, ``type`` and
    ``param``; an error body framed as an event stream gives its first event's.
    """
    stripped = payload.strip()
    if looks_like_sse(stripped) and (data := _first_event(stripped)) is not None:
        return normalize_error(data)
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):
        obj = None
    if not isinstance(obj, dict):
        text = payload.decode("utf-8", "replace").strip() or "upstream sent an empty error event"
        return _wrapped(text, {})
    inner = obj.get("error")
    if isinstance(inner, dict) and inner:
        if _text(inner.get("message")):
            return payload
        # The SDKs read only error.message: give it one from what the object says.
        message = _text(inner.get("msg")) or _text(inner.get("detail"))
        message = message or _text(inner.get("status")) or json.dumps(inner)
        return _wrapped(message, inner)
    words = [w for w in (_text(inner), _text(obj.get("message"))) if w]
    message = ": ".join(dict.fromkeys(words)) or _text(obj.get("msg")) or _text(obj.get("detail"))
    if message is None:
        message = payload.decode("utf-8", "replace").strip()
    return _wrapped(message, obj)


def _wrapped(message: str, fields: dict[str, Any]) -> bytes:
    if len(message) > _MESSAGE_LIMIT:
        message = message[:_MESSAGE_LIMIT] + "..."
    code, param = fields.get("code"), fields.get("param")
    err = openai_error(
        message,
        _text(fields.get("type")) or "upstream_error",
        code if isinstance(code, str | int) and not isinstance(code, bool) else None,
        param if isinstance(param, str) else None,
    )
    return json.dumps(err).encode()


# What an error says, in OpenAI's, Anthropic's, Google's and DashScope's words, as the
# HTTP status an SDK would have raised on: a client's fault must not become a 502 that
# openai-python retries, nor a rate limit a failure that opens a circuit. Keys are
# lower-cased, and a dotted code (DashScope's ``Throttling.RateQuota``) is looked up by
# its first part.
_STATUS_WORDS = {
    **dict.fromkeys(
        (
            "rate_limit_exceeded", "rate_limit_error", "rate_limited", "requests", "tokens",
            "too_many_requests", "resource_exhausted", "throttling", "insufficient_quota",
            "quota_exceeded", "allocationquota",
        ),
        429,
    ),
    **dict.fromkeys(
        (
            "invalid_request_error", "invalid_request", "bad_request", "invalid_argument",
            "invalidparameter", "invalid_parameter", "context_length_exceeded",
            "datainspectionfailed", "data_inspection_failed", "invalid_value",
            "failed_precondition", "badrequest",
        ),
        400,
    ),
    **dict.fromkeys(
        (
            "authentication_error", "invalid_api_key", "invalidapikey", "unauthenticated",
            "unauthorized", "invalid_authentication",
        ),
        401,
    ),
    **dict.fromkeys(
        ("permission_error", "permission_denied", "forbidden", "accessdenied", "arrearage"),
        403,
    ),
    **dict.fromkeys(
        ("not_found_error", "not_found", "model_not_found", "modelnotfound", "notfound"), 404
    ),
    **dict.fromkeys(("request_too_large", "payload_too_large"), 413),
    "overloaded_error": 529,
    **dict.fromkeys(("service_unavailable", "unavailable", "overloaded"), 503),
    **dict.fromkeys(("timeout", "request_timeout", "requesttimeout", "deadline_exceeded"), 504),
    **dict.fromkeys(
        ("api_error", "server_error", "internal_error", "internalerror", "internal"), 500
    ),
}  # fmt: skip


def _status_of(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None
    text = str(value).strip()
    if text.isdigit():
        number = int(text)
        return number if 400 <= number < 600 else None
    return _STATUS_WORDS.get(text.lower().split(".", 1)[0])


def error_status(payload: bytes) -> int:
    """The HTTP status an upstream error object names, by number or by word (its
    ``status``, ``code`` or ``type``, in that order), else 502."""
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):
        return 502
    if not isinstance(obj, dict):
        return 502
    err = obj.get("error")
    for where in (err, obj):
        if isinstance(where, dict):
            for key in ("status", "code", "type"):
                status = _status_of(where.get(key))
                if status is not None:
                    return status
    return 502


def is_error(payload: bytes) -> bool:
    """A JSON object with a non-empty top-level ``error``, as the SDKs see it."""
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):
        return False
    return isinstance(obj, dict) and bool(obj.get("error"))


def bare_error(line: bytes) -> bytes | None:
    """The error object in a stray non-SSE line (``{"error": ...}``), else None."""
    if not line.startswith(b"{"):
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if isinstance(obj, dict) and obj.get("error"):
        return line
    return None


def _empty(value: Any) -> bool:
    """Nothing a client could read: None, "", or containers of nothing."""
    if isinstance(value, dict):
        return all(_empty(v) for v in value.values())
    if isinstance(value, list):
        return all(_empty(v) for v in value)
    return value is None or value == ""


def only_usage(obj: Any) -> bool:
    """A chunk that carries the usage and nothing else: no choices, or choices with no
    text, no delta but a role, and no finish_reason (LiteLLM's usage chunk carries
    ``[{"index": 0, "delta": {}}]``; on /v1/completions ``[{"index": 0}]``)."""
    if not isinstance(obj, dict):
        return False
    choices = obj.get("choices")
    if not isinstance(choices, list):
        return choices is None
    for choice in choices:
        if not isinstance(choice, dict):
            return False
        for key, value in choice.items():
            if key == "index":
                continue
            if key == "delta" and isinstance(value, dict):
                value = {k: v for k, v in value.items() if k != "role"}
            if not _empty(value):
                return False
    return True


def usage_from(usage: Any) -> tuple[int, int] | None:
    """Prompt and completion tokens of a parsed ``usage`` object."""
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens") or usage.get("input_tokens") or 0
    completion = usage.get("completion_tokens") or usage.get("output_tokens") or 0
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return prompt, completion
