"""A chat-completions request as a Responses request, for accounts that speak the
Responses API natively (``api = "responses"``).

What a Responses upstream cannot do for a chat client (``n`` > 1, ``stop``, penalties,
legacy ``functions``, audio) is refused by name, so the gateway can leave the request
to a chat account rather than send a different question.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.core.dialects.responses_common import JSON, RequestError


@dataclass(frozen=True, slots=True)
class NativeRequest:
    """A translated chat request: ``body`` goes to the Responses upstream."""

    body: JSON
    stream: bool  # the chat client streams
    include_usage: bool  # the chat client asked for the usage chunk


# Accepted and left out: they steer caching, latency or logging, not the answer.
_IGNORED = frozenset({"stream_options", "seed", "prediction", "store"})
_COPIED = (
    "temperature",
    "top_p",
    "parallel_tool_calls",
    "user",
    "metadata",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
)
_REFUSED_UNLESS_DEFAULT = {
    "n": 1, "stop": None, "frequency_penalty": 0, "presence_penalty": 0, "logit_bias": None,
    "audio": None, "functions": None, "function_call": None, "web_search_options": None,
}  # fmt: skip
_HANDLED = frozenset(
    {
        "model",
        "messages",
        "stream",
        "tools",
        "tool_choice",
        "max_tokens",
        "max_completion_tokens",
        "reasoning_effort",
        "response_format",
        "verbosity",
        "logprobs",
        "top_logprobs",
        *_COPIED,
    }
)


def _check(body: Mapping[str, Any]) -> None:
    for key, value in body.items():
        if key in _REFUSED_UNLESS_DEFAULT:
            if value not in (_REFUSED_UNLESS_DEFAULT[key], [], {}, ""):
                raise RequestError(
                    f"{key} is not supported by this upstream (Responses API).",
                    key,
                    "unsupported_parameter",
                )
        elif key == "modalities":
            if value != ["text"]:
                raise RequestError("Only text output is supported here.", key, "unsupported_value")
        elif key not in _HANDLED and key not in _IGNORED:
            raise RequestError(f"Unknown parameter: '{key}'.", key, "unknown_parameter")


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text") or p.get("refusal") or "") for p in content if isinstance(p, Mapping)
        )
    return ""


def _part(part: Any, param: str) -> JSON:
    if isinstance(part, str):
        return {"type": "input_text", "text": part}
    if not isinstance(part, Mapping):
        raise RequestError("A content part must be an object.", param, "invalid_type")
    kind = part.get("type")
    if kind == "text":
        return {"type": "input_text", "text": str(part.get("text", ""))}
    if kind == "image_url":
        image = part.get("image_url")
        image = image if isinstance(image, Mapping) else {"url": image}
        return {
            "type": "input_image",
            "image_url": image.get("url"),
            "detail": image.get("detail") or "auto",
        }
    if kind == "input_audio":
        return {"type": "input_audio", "input_audio": part.get("input_audio")}
    if kind == "file":
        file = part.get("file")
        file = file if isinstance(file, Mapping) else {}
        return {"type": "input_file", **{k: v for k, v in file.items() if v is not None}}
    raise RequestError(f"Content part type {kind!r} is not supported.", f"{param}.type")


def _user_content(content: Any, param: str) -> str | list[JSON]:
    if isinstance(content, list):
        return [_part(p, f"{param}[{i}]") for i, p in enumerate(content)]
    return _text(content)


def _messages(messages: Any) -> tuple[str | None, list[JSON]]:
    """The leading system messages as ``instructions``; the rest as input items."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty array.", "messages", "invalid_type")
    system: list[str] = []
    items: list[JSON] = []
    custom_calls: set[str] = set()
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise RequestError("Each message must be an object.", where, "invalid_type")
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            if not items:
                system.append(_text(content))
            else:
                items.append({"type": "message", "role": role, "content": _text(content)})
        elif role == "user":
            items.append(
                {
                    "type": "message",
                    "role": "user",
                    "content": _user_content(content, f"{where}.content"),
                }
            )
        elif role == "assistant":
            text = _text(content)
            if text:
                items.append({"type": "message", "role": "assistant", "content": text})
            for call in message.get("tool_calls") or []:
                if not isinstance(call, Mapping):
                    continue
                if call.get("type") == "custom":
                    custom = call.get("custom") or {}
                    custom_calls.add(str(call.get("id")))
                    items.append(
                        {
                            "type": "custom_tool_call",
                            "call_id": call.get("id"),
                            "name": custom.get("name"),
                            "input": custom.get("input", ""),
                        }
                    )
                    continue
                fn = call.get("function") or {}
                items.append(
                    {
                        "type": "function_call",
                        "call_id": call.get("id"),
                        "name": fn.get("name"),
                        "arguments": fn.get("arguments") or "{}",
                    }
                )
        elif role == "tool":
            call_id = str(message.get("tool_call_id"))
            kind = "custom_tool_call_output" if call_id in custom_calls else "function_call_output"
            items.append({"type": kind, "call_id": call_id, "output": _text(content)})
        else:
            raise RequestError(f"Message role {role!r} is not supported here.", f"{where}.role")
    return ("\n\n".join(system) if system else None), items


def _tools(tools: Any) -> list[JSON]:
    out: list[JSON] = []
    for i, tool in enumerate(tools if isinstance(tools, list) else []):
        if not isinstance(tool, Mapping):
            raise RequestError("Each tool must be an object.", f"tools[{i}]", "invalid_type")
        if tool.get("type") == "custom":
            custom = dict(tool.get("custom") or {})
            out.append({"type": "custom", **custom})
            continue
        if tool.get("type") != "function":
            raise RequestError(
                f"Tool type {tool.get('type')!r} is not supported.", f"tools[{i}].type"
            )
        fn = tool.get("function") or {}
        flat: JSON = {"type": "function", "name": fn.get("name")}
        if fn.get("description") is not None:
            flat["description"] = fn["description"]
        flat["parameters"] = fn.get("parameters") or {"type": "object", "properties": {}}
        # Responses functions are strict unless told otherwise, chat's are not.
        flat["strict"] = bool(fn.get("strict", False))
        out.append(flat)
    return out


def _tool_choice(choice: Any) -> Any:
    if isinstance(choice, str) or not isinstance(choice, Mapping):
        return choice
    kind = choice.get("type")
    if kind in ("function", "custom"):
        named = choice.get(kind) or {}
        return {"type": kind, "name": named.get("name")}
    if kind == "allowed_tools":
        allowed = choice.get("allowed_tools") or {}
        tools = [
            {
                "type": t.get("type", "function"),
                "name": (t.get(t.get("type", "function")) or {}).get("name"),
            }
            for t in allowed.get("tools") or []
            if isinstance(t, Mapping)
        ]
        return {"type": "allowed_tools", "mode": allowed.get("mode", "auto"), "tools": tools}
    return choice


def _text_format(response_format: Any) -> JSON | None:
    if not isinstance(response_format, Mapping) or response_format.get("type") in (None, "text"):
        return None
    if response_format.get("type") == "json_schema":
        schema = response_format.get("json_schema") or {}
        return {"type": "json_schema", **{k: v for k, v in schema.items() if v is not None}}
    return {"type": str(response_format["type"])}


def chat_to_responses_request(body: Mapping[str, Any]) -> NativeRequest:
    """The Responses request for a chat-completions request. Raises RequestError."""
    body = {k: v for k, v in body.items() if v is not None}
    _check(body)
    instructions, items = _messages(body.get("messages"))
    stream = bool(body.get("stream", False))
    out: JSON = {"model": body.get("model"), "input": items, "stream": stream}
    # The upstream keeps nothing: seamline's conversations are the client's messages.
    out["store"] = False
    if instructions is not None:
        out["instructions"] = instructions
    if body.get("tools"):
        out["tools"] = _tools(body["tools"])
    if "tool_choice" in body:
        out["tool_choice"] = _tool_choice(body["tool_choice"])
    for key in _COPIED:
        if key in body:
            out[key] = body[key]
    if "parallel_tool_calls" in out and "tools" not in out:
        del out["parallel_tool_calls"]
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None:
        out["max_output_tokens"] = limit
    if body.get("reasoning_effort") is not None:
        out["reasoning"] = {"effort": body["reasoning_effort"]}
    text: JSON = {}
    fmt = _text_format(body.get("response_format"))
    if fmt is not None:
        text["format"] = fmt
    if body.get("verbosity") is not None:
        text["verbosity"] = body["verbosity"]
    if text:
        out["text"] = text
    if body.get("logprobs"):
        out["include"] = ["message.output_text.logprobs"]
        if body.get("top_logprobs"):
            out["top_logprobs"] = body["top_logprobs"]
    options = body.get("stream_options")
    include_usage = isinstance(options, Mapping) and bool(options.get("include_usage"))
    return NativeRequest(out, stream, include_usage)
