"""A Responses request (``POST /v1/responses``) as a chat-completions request.

Pure: the parsed body in, a :class:`ChatRequest` out, or a :class:`RequestError`
naming the parameter when the request asks for what a chat upstream cannot do and the
answer would differ for it. The conversation a ``previous_response_id`` points at is
the gateway's to fetch: it passes the earlier input and output items in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from proxy.core.dialects.responses_common import JSON, Echo, RequestError, ToolRef
from proxy.core.dialects.responses_input import chat_messages, input_items
from proxy.core.dialects.responses_tools import translate_tools

# Read and translated.
HANDLED = frozenset({
    "model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls",
    "max_output_tokens", "temperature", "top_p", "stop", "reasoning", "text", "metadata",
    "user", "stream", "previous_response_id", "store", "include", "top_logprobs",
    "truncation", "background",
})  # fmt: skip
# Accepted and left out: they steer billing, caching, latency, logging or hosted tools,
# never the words of the answer. ``truncation: "auto"`` and ``context_management`` only
# matter past the context window, where the upstream then refuses instead of trimming:
# an error, never a different answer.
IGNORED = frozenset({
    "service_tier", "prompt_cache_key", "prompt_cache_retention", "prompt_cache_options",
    "safety_identifier", "stream_options", "client_metadata", "max_tool_calls",
    "context_management", "access_programs", "moderation", "image", "background_options",
})  # fmt: skip
# Features whose answer a chat upstream cannot give: refused by name.
REFUSED = {
    "conversation": "Conversations are not supported here; use previous_response_id.",
    "prompt": "Stored prompt templates are not supported here; send the instructions.",
}


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A translated Responses request.

    ``body`` goes upstream (model aliases still to apply); ``tools`` maps chat function
    names back to the client's tools; ``dropped_tools`` are the hosted tool types left
    out (for the trace and a response header); ``input_items`` are this request's input
    as items, for the gateway to store with the answer's output items when ``store``.
    """

    body: JSON
    tools: Mapping[str, ToolRef]
    dropped_tools: tuple[str, ...]
    stream: bool
    echo: Echo
    input_items: tuple[JSON, ...]
    ignored: tuple[str, ...]  # fields accepted and not sent upstream


def _present(body: Mapping[str, Any]) -> dict[str, Any]:
    # An explicit null is the same as leaving the field out (the SDKs send some).
    return {k: v for k, v in body.items() if v is not None}


def _response_format(text: Any) -> tuple[JSON | None, Any]:
    """Chat's ``response_format`` and ``verbosity`` for ``text``."""
    if not isinstance(text, Mapping):
        raise RequestError("text must be an object.", "text", "invalid_type")
    fmt = text.get("format")
    verbosity = text.get("verbosity")
    if fmt is None or (isinstance(fmt, Mapping) and fmt.get("type") == "text"):
        return None, verbosity
    if not isinstance(fmt, Mapping):
        raise RequestError("text.format must be an object.", "text.format", "invalid_type")
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}, verbosity
    if fmt.get("type") == "json_schema":
        if not isinstance(fmt.get("schema"), Mapping):
            raise RequestError(
                "json_schema needs its `schema`.",
                "text.format.schema",
                "missing_required_parameter",
            )
        schema: JSON = {"name": fmt.get("name") or "response", "schema": fmt["schema"]}
        for key in ("strict", "description"):
            if fmt.get(key) is not None:
                schema[key] = fmt[key]
        return {"type": "json_schema", "json_schema": schema}, verbosity
    raise RequestError(
        f"text.format type {fmt.get('type')!r} is not supported.", "text.format.type"
    )


def _check_fields(body: Mapping[str, Any]) -> tuple[str, ...]:
    ignored = []
    for key in body:
        if key in HANDLED:
            continue
        if key in IGNORED:
            ignored.append(key)
        elif key in REFUSED:
            raise RequestError(REFUSED[key], key, "unsupported_parameter")
        else:
            # As OpenAI does: a field this code does not know might change the answer.
            raise RequestError(f"Unknown parameter: '{key}'.", key, "unknown_parameter")
    if body.get("background"):
        raise RequestError(
            "Background responses are not supported here; stream instead.",
            "background",
            "unsupported_parameter",
        )
    return tuple(ignored)


def _echo(body: Mapping[str, Any]) -> Echo:
    text = dict(body.get("text") or {})
    text.setdefault("format", {"type": "text"})
    extra = {
        k: body[k] for k in ("prompt_cache_key", "safety_identifier", "max_tool_calls") if k in body
    }
    return Echo(
        model=str(body["model"]),
        instructions=body.get("instructions"),
        tools=list(body.get("tools") or []),
        tool_choice=body.get("tool_choice", "auto"),
        parallel_tool_calls=bool(body.get("parallel_tool_calls", True)),
        temperature=body.get("temperature"),
        top_p=body.get("top_p"),
        max_output_tokens=body.get("max_output_tokens"),
        metadata=dict(body.get("metadata") or {}),
        text=text,
        reasoning=body.get("reasoning"),
        store=bool(body.get("store", True)),
        previous_response_id=body.get("previous_response_id"),
        user=body.get("user"),
        truncation=str(body.get("truncation", "disabled")),
        top_logprobs=body.get("top_logprobs"),
        extra=extra,
    )


def translate_request(
    body: Mapping[str, Any], history_items: Sequence[Mapping[str, Any]] = ()
) -> ChatRequest:
    """The chat-completions request for a Responses request.

    ``history_items`` are the input and output items of the responses before this one
    (what ``previous_response_id`` points at), oldest first; their instructions are
    not carried over, as OpenAI does. Raises :class:`RequestError`.
    """
    body = _present(body)
    ignored = _check_fields(body)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError(
            "You must provide a model parameter.", "model", "missing_required_parameter"
        )
    items = input_items(body.get("input"))
    all_items = [*history_items, *items]
    extra_tools = [
        tool
        for item in all_items
        if isinstance(item, Mapping) and item.get("type") == "additional_tools"
        for tool in (item.get("tools") or [])
    ]
    plan = translate_tools(body.get("tools"), body.get("tool_choice"), extra_tools)

    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise RequestError("instructions must be a string.", "instructions", "invalid_type")
    messages = chat_messages(instructions, all_items, plan.names, len(history_items))

    stream = bool(body.get("stream", False))
    chat: JSON = {"model": model, "messages": messages, "stream": stream}
    if stream:
        chat["stream_options"] = {"include_usage": True}
    if plan.tools:
        chat["tools"] = plan.tools
    if plan.tool_choice is not None:
        chat["tool_choice"] = plan.tool_choice
    if plan.tools and "parallel_tool_calls" in body:
        # Upstreams refuse it without tools (OpenAI does).
        chat["parallel_tool_calls"] = body["parallel_tool_calls"]
    if "max_output_tokens" in body:
        # max_tokens, not max_completion_tokens: every chat upstream knows it, and for
        # the reasoning upstreams (DeepSeek, Qwen) it counts the reasoning too, as
        # max_output_tokens does.
        chat["max_tokens"] = body["max_output_tokens"]
    for key in ("temperature", "top_p", "stop", "user"):
        if key in body:
            chat[key] = body[key]
    reasoning = body.get("reasoning")
    if reasoning is not None:
        if not isinstance(reasoning, Mapping):
            raise RequestError("reasoning must be an object.", "reasoning", "invalid_type")
        if reasoning.get("effort") is not None:
            chat["reasoning_effort"] = reasoning["effort"]
    if "text" in body:
        response_format, verbosity = _response_format(body["text"])
        if response_format is not None:
            chat["response_format"] = response_format
        if verbosity is not None:
            chat["verbosity"] = verbosity
    include = body.get("include") or []
    if not isinstance(include, list):
        raise RequestError("include must be an array.", "include", "invalid_type")
    if "message.output_text.logprobs" in include or body.get("top_logprobs"):
        chat["logprobs"] = True
        if body.get("top_logprobs"):
            chat["top_logprobs"] = body["top_logprobs"]
    return ChatRequest(
        body=chat,
        tools=plan.names,
        dropped_tools=plan.dropped,
        stream=stream,
        echo=_echo(body),
        input_items=tuple(dict(item) for item in items if isinstance(item, Mapping)),
        ignored=ignored,
    )


def without_reasoning(body: Mapping[str, Any]) -> JSON:
    """``body`` without the replayed ``reasoning_content`` of its assistant messages, for
    the upstreams that refuse unknown message fields (OpenAI's own chat API)."""
    messages = [
        {k: v for k, v in m.items() if k != "reasoning_content"} if isinstance(m, Mapping) else m
        for m in body.get("messages", [])
    ]
    return {**body, "messages": messages}
