"""Whole answers, not streams: a ``chat.completion`` as an Anthropic ``message``, and back.

A non-streaming Messages client over a chat account gets ``completion_to_message``
(the gateway merges a streamed answer with ``convert.Aggregator`` first); a
non-streaming chat client over an Anthropic account gets ``message_to_completion``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from proxy.core.dialects.anthropic_errors import AnthropicError
from proxy.core.dialects.anthropic_maps import (
    BROKEN_REASONS,
    anthropic_usage,
    chat_usage,
    finish_reason,
    stop_reason,
)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _text(content: Any) -> str:
    """A chat message's content as text: a string, or the text of its parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def tool_input(arguments: Any) -> dict[str, Any]:
    """A tool call's arguments as the object a ``tool_use`` block's ``input`` must be.
    Text that is no JSON object (a model's broken JSON) is kept whole under
    ``arguments``, so the client sees what the model wrote rather than nothing."""
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        value = json.loads(arguments)
    except (ValueError, RecursionError):
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"arguments": arguments}


def completion_to_message(
    body: Any,
    model: str,
    message_id: str | None = None,
    stop_sequences: tuple[str, ...] = (),
    tool_names: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The Anthropic ``message`` for a chat completion (its first choice).

    Raises ``AnthropicError`` when the completion holds no answer (no choice), or one
    its finish reason says broke off (DeepSeek's ``insufficient_system_resource``):
    a truncated answer is never passed off as complete.
    """
    choices = body.get("choices") if isinstance(body, dict) else None
    choice = choices[0] if isinstance(choices, list) and choices else None
    if not isinstance(choice, dict):
        raise AnthropicError("upstream answered with no choices", 502)
    reason = _str(choice.get("finish_reason")) or "stop"
    if reason in BROKEN_REASONS:
        kind = BROKEN_REASONS[reason]
        raise AnthropicError(f"upstream broke off the answer: {reason}", 529, kind)
    message = choice.get("message")
    message = message if isinstance(message, dict) else {}
    names = tool_names or {}
    content: list[dict[str, Any]] = []
    thinking = _str(message.get("reasoning_content")) or _str(message.get("reasoning"))
    if thinking is not None:
        content.append({"type": "thinking", "thinking": thinking, "signature": ""})
    for key in ("content", "refusal"):
        text = _text(message.get(key))
        if text:
            content.append({"type": "text", "text": text})
    calls = message.get("tool_calls")
    calls = list(calls) if isinstance(calls, list) else []
    if isinstance(message.get("function_call"), dict):
        calls.append({"function": message["function_call"]})
    for n, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not _str(function.get("name")):
            continue
        name = names.get(function["name"], function["name"])
        call_id = _str(call.get("id")) or f"toolu_{n}"
        tool = {"type": "tool_use", "id": call_id, "name": name}
        content.append({**tool, "input": tool_input(function.get("arguments"))})
    stop, sequence = stop_reason(reason), None
    matched = _str(choice.get("stop_reason")) or _str(choice.get("matched_stop"))
    if stop in ("end_turn", "stop_sequence") and matched in stop_sequences:
        stop, sequence = "stop_sequence", matched
    if stop == "end_turn" and any(b["type"] == "tool_use" for b in content):
        stop = "tool_use"
    upstream_id = _str(body.get("id")) or "seamline"
    return {
        "id": message_id
        or (upstream_id if upstream_id.startswith("msg_") else f"msg_{upstream_id}"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": sequence,
        "usage": anthropic_usage(body.get("usage")),
    }


def message_to_completion(
    body: Any, created: int, tool_names: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The ``chat.completion`` for an Anthropic ``message`` (a non-streaming answer)."""
    if not isinstance(body, dict):
        body = {}
    names = tool_names or {}
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in body.get("content") or ():
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "thinking" and isinstance(block.get("thinking"), str):
            thoughts.append(block["thinking"])
        elif kind == "tool_use" and isinstance(block.get("name"), str):
            arguments = json.dumps(block.get("input") or {}, ensure_ascii=False)
            function = {"name": names.get(block["name"], block["name"]), "arguments": arguments}
            calls.append({"id": block.get("id") or "", "type": "function", "function": function})
        # Server tool calls and their results ran at Anthropic: not the client's to see.
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if thoughts:
        message["reasoning_content"] = "".join(thoughts)
    if calls:
        message["tool_calls"] = calls
    elif message["content"] is None:
        message["content"] = ""
    choice = {
        "index": 0,
        "message": message,
        "finish_reason": finish_reason(body.get("stop_reason")),
    }
    return {
        "id": body.get("id") or "",
        "object": "chat.completion",
        "created": created,
        "model": body.get("model") or "",
        "choices": [choice],
        "usage": chat_usage(body.get("usage")),
    }
