"""What both directions of the Responses dialect share: ids, errors, usage, the
``response`` object and the SSE encoding of its events.

Shapes follow openai-python's ``types/responses`` (the judge where OpenAI's docs and
the SDKs disagree): every ``response`` built here validates as its ``Response``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from proxy.core.openai import error_status, normalize_error
from proxy.errors import openai_error

JSON = dict[str, Any]
IdFactory = Callable[[str], str]
"""Given a prefix (``msg``, ``fc``, ``ctc``, ``rs``, ``call``), a new id with it."""


def sequential_ids(seed: str) -> IdFactory:
    """Ids ``<prefix>_<seed><n>``, n counting from 0 in hex.

    The translators have no randomness of their own: the gateway passes a random
    seed per response (``secrets.token_hex(12)``), tests a fixed one. Ids made from
    one seed are stable within the response and unique across it.
    """
    counter = itertools.count()
    return lambda prefix: f"{prefix}_{seed}{next(counter):04x}"


class RequestError(Exception):
    """A request the translation refuses: an OpenAI ``invalid_request_error`` with the
    offending ``param`` named, answered with ``status`` before anything goes upstream."""

    def __init__(
        self, message: str, param: str | None, code: str = "invalid_value", status: int = 400
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.status = status

    def body(self) -> JSON:
        """The OpenAI error body, as ``{"error": {...}}``."""
        return openai_error(self.message, "invalid_request_error", self.code, self.param)

    def json_bytes(self) -> bytes:
        return json.dumps(self.body(), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class UpstreamFailure:
    """Why an upstream answer failed: its own words when it sent an error, seamline's
    when the stream was cut. ``status`` is the HTTP status the error names."""

    message: str
    code: str | None = None
    type: str = "upstream_error"
    param: str | None = None
    status: int = 502

    @classmethod
    def from_payload(cls, payload: bytes) -> UpstreamFailure:
        """From an upstream error payload of any shape (normalized as the chat route
        does: OpenAI, Anthropic, DashScope, bare text)."""
        normal = normalize_error(payload)
        err = json.loads(normal)["error"]
        code = err.get("code")
        param = err.get("param")
        return cls(
            message=str(err.get("message") or "upstream error"),
            code=None if code is None else str(code),
            type=str(err.get("type") or "upstream_error"),
            param=param if isinstance(param, str) else None,
            status=error_status(normal),
        )

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> UpstreamFailure:
        """From a parsed JSON object holding an error (``{"error": ...}`` or the error)."""
        return cls.from_payload(json.dumps(obj, ensure_ascii=False).encode())

    def response_error(self) -> JSON:
        """The ``error`` of a failed ``response``. Its ``code`` must be one of the
        SDK's literals (``ResponseError.code``), so the upstream's own code stays in
        the ``error`` event; the words stay in both."""
        code = "rate_limit_exceeded" if self.status == 429 else "server_error"
        return {"code": code, "message": self.message, "type": self.type, "param": self.param}

    def chat_error(self) -> JSON:
        """The OpenAI error body a chat client reads."""
        return openai_error(self.message, self.type, self.code, self.param)


TRUNCATED = UpstreamFailure(
    "upstream stream ended before the answer was complete (truncated: no finish_reason)",
    code="upstream_truncated",
)
CUT = UpstreamFailure(
    "upstream stream was cut before the answer was complete", code="upstream_truncated"
)


@dataclass(frozen=True, slots=True)
class ToolRef:
    """What a chat function name stands for in the client's Responses request."""

    kind: Literal["function", "custom"]
    name: str
    namespace: str | None = None


@dataclass(frozen=True, slots=True)
class Echo:
    """The request fields a ``response`` object repeats back to the client."""

    model: str
    instructions: Any = None
    tools: list[Any] = field(default_factory=list)
    tool_choice: Any = "auto"
    parallel_tool_calls: bool = True
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    text: dict[str, Any] = field(default_factory=lambda: {"format": {"type": "text"}})
    reasoning: dict[str, Any] | None = None
    store: bool = True
    previous_response_id: str | None = None
    user: str | None = None
    truncation: str = "disabled"
    top_logprobs: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # prompt_cache_key and the like

    def fields(self) -> JSON:
        out: JSON = {
            "model": self.model,
            "instructions": self.instructions,
            "tools": self.tools,
            "tool_choice": self.tool_choice,
            "parallel_tool_calls": self.parallel_tool_calls,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_output_tokens": self.max_output_tokens,
            "metadata": self.metadata,
            "text": self.text,
            "reasoning": self.reasoning,
            "store": self.store,
            "previous_response_id": self.previous_response_id,
            "user": self.user,
            "truncation": self.truncation,
            "top_logprobs": self.top_logprobs,
            "background": False,
        }
        out.update(self.extra)
        return out


def response_object(
    echo: Echo,
    *,
    response_id: str,
    created_at: float,
    status: str,
    output: list[JSON],
    usage: JSON | None = None,
    error: JSON | None = None,
    incomplete_reason: str | None = None,
    model: str | None = None,
) -> JSON:
    """A whole ``response`` object, as created/in_progress/completed/failed/incomplete
    events and non-streaming answers carry it."""
    obj: JSON = {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "error": error,
        "incomplete_details": None if incomplete_reason is None else {"reason": incomplete_reason},
        "output": output,
        "usage": usage,
    }
    obj.update(echo.fields())
    if model:
        obj["model"] = model
    return obj


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def responses_usage(usage: Any) -> JSON | None:
    """A chat ``usage`` object in the Responses shape. The details are always there
    (the SDK's type requires them), zero where the upstream gave none; DeepSeek's
    ``prompt_cache_hit_tokens`` counts as cached."""
    if not isinstance(usage, Mapping):
        return None
    prompt = _count(usage.get("prompt_tokens", usage.get("input_tokens")))
    completion = _count(usage.get("completion_tokens", usage.get("output_tokens")))
    total = _count(usage.get("total_tokens")) or prompt + completion
    prompt_details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
    prompt_details = prompt_details if isinstance(prompt_details, Mapping) else {}
    done_details = usage.get("completion_tokens_details") or usage.get("output_tokens_details")
    done_details = done_details if isinstance(done_details, Mapping) else {}
    cached = _count(prompt_details.get("cached_tokens")) or _count(
        usage.get("prompt_cache_hit_tokens")
    )
    written = _count(prompt_details.get("cache_write_tokens")) or _count(
        prompt_details.get("cache_creation_tokens")
    )
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": _count(done_details.get("reasoning_tokens"))},
        "total_tokens": total,
    }


def chat_usage(usage: Any) -> JSON | None:
    """A Responses ``usage`` object in the chat shape."""
    if not isinstance(usage, Mapping):
        return None
    prompt = _count(usage.get("input_tokens"))
    completion = _count(usage.get("output_tokens"))
    out: JSON = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": _count(usage.get("total_tokens")) or prompt + completion,
    }
    details = usage.get("input_tokens_details")
    if isinstance(details, Mapping) and "cached_tokens" in details:
        out["prompt_tokens_details"] = {"cached_tokens": _count(details.get("cached_tokens"))}
    details = usage.get("output_tokens_details")
    if isinstance(details, Mapping) and "reasoning_tokens" in details:
        out["completion_tokens_details"] = {
            "reasoning_tokens": _count(details.get("reasoning_tokens"))
        }
    return out


def dumps(obj: Any) -> bytes:
    """Compact JSON as UTF-8. A lone surrogate (an upstream's unpaired ``\\ud83d``)
    cannot be UTF-8: only then is the text ASCII-escaped, which JSON parsers read back
    to the same string."""
    try:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:
        return json.dumps(obj, separators=(",", ":")).encode()


def encode_event(event: Mapping[str, Any]) -> bytes:
    """One Responses stream event as SSE: ``event: <type>`` and one ``data:`` line."""
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + dumps(event) + b"\n\n"


def encode_events(events: Iterable[Mapping[str, Any]]) -> bytes:
    return b"".join(encode_event(event) for event in events)
