"""Chat request -> Messages request, for accounts of ``kind = "anthropic"``.

``to_messages`` takes what an OpenAI client sent to ``/v1/chat/completions`` and gives
the body for Anthropic's ``/v1/messages``, or raises ``ChatRequestError`` (an OpenAI
error, 400) for what cannot be asked of Anthropic (``n`` above 1). What has no
Messages meaning (``logprobs``, ``seed``, penalties, ``logit_bias``, audio) is left
out and named in ``dropped``.

- System and developer messages, wherever they stand, become the top-level ``system``.
- Tool messages become ``tool_result`` blocks of a user message, first in it, as
  Anthropic wants; consecutive messages of one role are merged into one.
- ``max_tokens`` (or ``max_completion_tokens``) is required by Anthropic: when the
  client gave none it is ``MessagesTarget.default_max_tokens``, 8,192 (what every
  current Claude model can produce; Claude 3 Haiku's 4,096 is the one below).
- ``reasoning_effort`` becomes ``thinking`` with the budget of ``anthropic_request``'s
  table (``low`` 2,048, ``medium`` 8,192, ``high`` 24,576), or adaptive thinking with
  ``output_config.effort`` for accounts whose models take no budget. Anthropic refuses
  thinking beside a ``temperature`` other than 1, a ``top_p`` under 0.95, or a forced
  tool: those sampling fields are dropped, and a forced tool drops the thinking.
- ``temperature`` is cut to Anthropic's range, 0 to 1.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from proxy.core.dialects.anthropic_request import BUDGETS
from proxy.core.openai import error_json

DEFAULT_MAX_TOKENS = 8192
# Room for the answer beside a thinking budget when the client set no max_tokens.
_ANSWER_ROOM = 4096
_MIN_BUDGET = 1024
_DATA_URL = re.compile(r"data:([^;,]*);base64,(.*)", re.S)
_HANDLED = frozenset(
    {
        "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
        "stop", "stream", "stream_options", "tools", "tool_choice", "parallel_tool_calls",
        "user", "reasoning_effort", "response_format", "n",
    }
)  # fmt: skip


class ChatRequestError(Exception):
    """A chat request Anthropic cannot be asked: a 400 with an OpenAI error body."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def json_bytes(self) -> bytes:
        return error_json(self.message, "invalid_request_error")


@dataclass(frozen=True, slots=True)
class MessagesTarget:
    """What the Anthropic account's models take."""

    default_max_tokens: int = DEFAULT_MAX_TOKENS
    # Adaptive thinking with an effort instead of budgets (the models that refuse
    # ``budget_tokens``).
    adaptive_thinking: bool = False


@dataclass(frozen=True, slots=True)
class MessagesRequest:
    """The translated request, and what the answer's translation needs to know of it."""

    body: dict[str, Any]
    stream: bool
    include_usage: bool
    dropped: tuple[str, ...]


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def _image(part: dict[str, Any], dropped: set[str]) -> dict[str, Any] | None:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        return None
    match = _DATA_URL.match(url)
    if match is not None:
        source = {"type": "base64", "media_type": match.group(1), "data": match.group(2)}
        return {"type": "image", "source": source}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    dropped.add("image of an unknown source")
    return None


def _file(part: dict[str, Any], dropped: set[str]) -> dict[str, Any] | None:
    file = part.get("file")
    data = file.get("file_data") if isinstance(file, dict) else None
    match = _DATA_URL.match(data) if isinstance(data, str) else None
    if match is None:
        dropped.add("file without file_data")
        return None
    source = {"type": "base64", "media_type": match.group(1), "data": match.group(2)}
    return {"type": "document", "source": source}


def _blocks(content: Any, dropped: set[str]) -> list[dict[str, Any]]:
    """A chat message's content as Messages blocks (never an empty text block)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content if isinstance(content, list) else ():
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        block: dict[str, Any] | None = None
        if kind == "text" and isinstance(part.get("text"), str) and part["text"]:
            block = {"type": "text", "text": part["text"]}
        elif kind == "image_url":
            block = _image(part, dropped)
        elif kind == "file":
            block = _file(part, dropped)
        elif kind != "text":
            dropped.add(f"{kind} content")
        if block is not None:
            blocks.append(block)
    return blocks


def _tool_input(arguments: Any) -> Any:
    if isinstance(arguments, dict):
        return arguments
    try:
        value = json.loads(arguments) if isinstance(arguments, str) and arguments else {}
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def _assistant(message: dict[str, Any], dropped: set[str]) -> list[dict[str, Any]]:
    blocks = _blocks(message.get("content"), dropped)
    calls = message.get("tool_calls")
    calls = list(calls) if isinstance(calls, list) else []
    if isinstance(message.get("function_call"), dict):
        fc = message["function_call"]
        calls.append({"id": f"call_{fc.get('name')}", "function": fc})
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            continue
        block = {"type": "tool_use", "id": str(call.get("id") or ""), "name": function["name"]}
        blocks.append({**block, "input": _tool_input(function.get("arguments"))})
    if message.get("reasoning_content"):
        # Anthropic takes thinking back only with its signature, which chat never had.
        dropped.add("reasoning_content")
    return blocks


def _push(out: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    if not blocks:
        return
    if out and out[-1]["role"] == role:
        content = out[-1]["content"]
        if blocks[0]["type"] == "tool_result":
            # Tool results first in their user message: Anthropic refuses them later.
            at = sum(1 for b in content if b["type"] == "tool_result")
            content[at:at] = blocks
        else:
            content.extend(blocks)
    else:
        out.append({"role": role, "content": list(blocks)})


def _conversation(messages: Any, dropped: set[str]) -> tuple[list[dict[str, Any]], list[str]]:
    if not isinstance(messages, list) or not messages:
        raise ChatRequestError("messages: a non-empty list is required")
    out: list[dict[str, Any]] = []
    system: list[str] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ChatRequestError(f"messages[{i}]: an object is required")
        role = message.get("role")
        if role in ("system", "developer"):
            text = _text(message.get("content"))
            if text:
                system.append(text)
        elif role == "user":
            _push(out, "user", _blocks(message.get("content"), dropped))
        elif role == "assistant":
            _push(out, "assistant", _assistant(message, dropped))
        elif role in ("tool", "function"):
            call_id = message.get("tool_call_id") or f"call_{message.get('name')}"
            result = {"type": "tool_result", "tool_use_id": str(call_id)}
            _push(out, "user", [{**result, "content": _text(message.get("content"))}])
        else:
            raise ChatRequestError(f"messages[{i}].role: unknown role {role!r}")
    return out, system


def _tools(request: dict[str, Any], body: dict[str, Any], dropped: set[str]) -> None:
    tools = []
    for tool in request.get("tools") or ():
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            dropped.add("non-function tool")
            continue
        schema = function.get("parameters")
        schema = schema if isinstance(schema, dict) else {"type": "object", "properties": {}}
        out = {"name": function["name"], "input_schema": schema}
        if isinstance(function.get("description"), str):
            out["description"] = function["description"]
        tools.append(out)
    if not tools:
        return
    body["tools"] = tools
    choice = request.get("tool_choice")
    tool_choice: dict[str, Any] | None = None
    if choice in ("auto", "none"):
        tool_choice = {"type": choice}
    elif choice == "required":
        tool_choice = {"type": "any"}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        tool_choice = {"type": "tool", "name": choice["function"].get("name")}
    if request.get("parallel_tool_calls") is False:
        tool_choice = tool_choice or {"type": "auto"}
        if tool_choice["type"] != "none":
            tool_choice["disable_parallel_tool_use"] = True
    if tool_choice is not None:
        body["tool_choice"] = tool_choice


def _stop(stop: Any) -> list[str]:
    stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
    # Anthropic refuses stop sequences of whitespace alone.
    return [s for s in stops if isinstance(s, str) and s.strip()]


def _thinking(
    request: dict[str, Any], body: dict[str, Any], given: bool, target: MessagesTarget,
    dropped: set[str],
) -> None:  # fmt: skip
    effort = request.get("reasoning_effort")
    if not isinstance(effort, str) or effort in ("none", ""):
        return
    if body.get("tool_choice", {}).get("type") in ("any", "tool"):
        dropped.add("reasoning_effort (Anthropic thinks only with tool_choice auto or none)")
        return
    if target.adaptive_thinking:
        body["thinking"] = {"type": "adaptive"}
        body["output_config"] = {"effort": "low" if effort == "minimal" else effort}
    else:
        budget = BUDGETS.get(effort, BUDGETS["medium"])
        if not given:
            body["max_tokens"] = max(body["max_tokens"], budget + _ANSWER_ROOM)
        elif budget >= body["max_tokens"]:
            budget = body["max_tokens"] - 1
        if budget < _MIN_BUDGET:
            dropped.add("reasoning_effort (max_tokens leaves no room for thinking)")
            return
        body["thinking"] = {"type": "enabled", "budget_tokens": budget}
    for key in ("temperature", "top_p"):
        value = body.get(key)
        if (
            value is not None
            and not (key == "temperature" and value == 1)
            and not (key == "top_p" and value >= 0.95)
        ):
            del body[key]
            dropped.add(f"{key} (Anthropic refuses it beside thinking)")


def to_messages(request: Any, target: MessagesTarget | None = None) -> MessagesRequest:
    """The Messages request for a chat request (the parsed JSON body)."""
    target = target or MessagesTarget()
    if not isinstance(request, dict):
        raise ChatRequestError("the request body should be a JSON object")
    n = request.get("n")
    if isinstance(n, int) and n > 1:
        raise ChatRequestError("n: Anthropic answers with one choice; n must be 1")
    dropped = {f"field {key}" for key in request if key not in _HANDLED}
    messages, system = _conversation(request.get("messages"), dropped)
    body: dict[str, Any] = {"model": request.get("model"), "messages": messages}
    if system:
        body["system"] = "\n\n".join(system)
    max_tokens = request.get("max_completion_tokens") or request.get("max_tokens")
    given = isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens > 0
    body["max_tokens"] = max_tokens if given else target.default_max_tokens
    temperature = request.get("temperature")
    if isinstance(temperature, int | float) and not isinstance(temperature, bool):
        body["temperature"] = min(max(float(temperature), 0.0), 1.0)
    if isinstance(request.get("top_p"), int | float):
        body["top_p"] = request["top_p"]
    stops = _stop(request.get("stop"))
    if stops:
        body["stop_sequences"] = stops
    _tools(request, body, dropped)
    _thinking(request, body, given, target, dropped)
    fmt = request.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = fmt.get("json_schema")
        schema = schema.get("schema") if isinstance(schema, dict) else None
        if isinstance(schema, dict):
            config = body.setdefault("output_config", {})
            config["format"] = {"type": "json_schema", "schema": schema}
    elif isinstance(fmt, dict) and fmt.get("type") not in (None, "text"):
        dropped.add(f"response_format {fmt.get('type')}")
    if isinstance(request.get("user"), str):
        body["metadata"] = {"user_id": request["user"]}
    stream = request.get("stream") is True
    if stream:
        body["stream"] = True
    options = request.get("stream_options")
    include_usage = stream and isinstance(options, dict) and options.get("include_usage") is True
    return MessagesRequest(body, stream, include_usage, tuple(sorted(dropped)))
