"""Messages request -> chat request, for chat-completions accounts serving ``/v1/messages``.

``to_chat`` takes the parsed body a Messages client (Claude Code, an Anthropic SDK)
sent and gives the chat body for the upstream, or raises ``AnthropicError`` (400)
for what Anthropic itself would refuse. What has no chat meaning is left out, named
in ``ChatRequest.dropped``, rather than refused:

- cache_control markers (kept only for accounts that declare ``cache_control``),
  ``anthropic-beta`` features, ``context_management``, ``container``,
  ``mcp_servers``, ``service_tier``, thinking signatures;
- server tools (``web_search_20250305``, ``bash_20250124``, ``code_execution_...``:
  any tool with a ``type`` other than ``custom``): Anthropic runs or defines them,
  a chat upstream cannot, so they are dropped. Only a ``tool_choice`` that names one
  is refused, since it would force a tool that no longer exists.

Thinking becomes ``reasoning_effort``, or the account's own reasoning switch. A
``budget_tokens`` maps to an effort by ``effort_for_budget``; adaptive thinking takes
``output_config.effort`` (Anthropic's default, ``high``, when none is given).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.core.dialects.anthropic_content import Context, chat_messages, system_content
from proxy.core.dialects.anthropic_errors import invalid
from proxy.core.dialects.anthropic_maps import MAX_CHAT_TOOL_NAME, chat_tool_name

EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
# Claude Code's thinking words and their budgets: "think" 4,000 tokens, "think hard"
# 10,000, "ultrathink" 31,999. The bounds put each in its own effort.
_BUDGET_BOUNDS = ((4096, "low"), (16384, "medium"))
# The reverse, for switches that take a budget: a budget inside each effort's range,
# so that budget -> effort -> budget lands in the same effort. 1,024 is Anthropic's least.
BUDGETS = {
    "minimal": 1024,
    "low": 2048,
    "medium": 8192,
    "high": 24576,
    "xhigh": 32768,
    "max": 65536,
}
_HANDLED = frozenset(
    {
        "model", "messages", "system", "max_tokens", "temperature", "top_p", "top_k",
        "stop_sequences", "stream", "metadata", "tools", "tool_choice", "thinking",
        "output_config", "output_format",
    }
)  # fmt: skip


def effort_for_budget(budget: int) -> str:
    """The reasoning effort of a thinking budget: under 4,096 tokens ``low``, under
    16,384 ``medium``, else ``high``."""
    for bound, effort in _BUDGET_BOUNDS:
        if budget < bound:
            return effort
    return "high"


@dataclass(frozen=True, slots=True)
class ReasoningSwitch:
    """How an account turns reasoning on and off when not by ``reasoning_effort``:
    fields merged into the body (``{"enable_thinking": true}`` for DashScope,
    ``{"chat_template_kwargs": {"enable_thinking": true}}`` for vLLM), and optionally
    the field the thinking budget goes in (DashScope's ``thinking_budget``)."""

    on: Mapping[str, Any]
    off: Mapping[str, Any] = field(default_factory=dict)
    budget_field: str | None = None


@dataclass(frozen=True, slots=True)
class ChatTarget:
    """What the account serving the request accepts."""

    top_k: bool = False
    reasoning: ReasoningSwitch | None = None
    # The reasoning_effort values it takes; a higher ask is lowered to the nearest one.
    efforts: tuple[str, ...] = ("low", "medium", "high")
    # The role of system messages found inside ``messages``: "user" for upstreams whose
    # chat templates allow a system message only first.
    system_role: str = "system"
    # Send assistant thinking back as ``reasoning_content`` (DeepSeek's thinking mode
    # wants it back within a tool-calling turn).
    replay_reasoning: bool = False
    # Keep cache_control markers on content parts (DashScope's explicit cache).
    cache_control: bool = False
    max_tool_name: int = MAX_CHAT_TOOL_NAME


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """The translated request, and what the answer's translation needs to know of it."""

    body: dict[str, Any]
    model: str
    stream: bool
    stop_sequences: tuple[str, ...]
    # Chat tool name -> the client's, for the names shortened for the upstream.
    tool_names: Mapping[str, str]
    dropped: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Thinking:
    """What the request asked of reasoning: on, off or unsaid (None), how hard, budget."""

    enabled: bool | None
    effort: str | None
    budget: int | None


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def thinking_of(request: Mapping[str, Any]) -> Thinking:
    """The request's ``thinking`` and ``output_config.effort``, read together."""
    config = request.get("output_config")
    effort = config.get("effort") if isinstance(config, dict) else None
    effort = effort.lower() if isinstance(effort, str) and effort.lower() in EFFORTS else None
    thinking = request.get("thinking")
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind == "disabled":
        return Thinking(False, None, None)
    if kind == "enabled":
        budget = thinking.get("budget_tokens") if isinstance(thinking, dict) else None
        if budget is not None and not (_int(budget) and budget > 0):
            raise invalid("thinking.budget_tokens: Input should be a positive integer")
        effort = effort or (effort_for_budget(budget) if budget else "medium")
        return Thinking(True, effort, budget or BUDGETS.get(effort))
    if kind == "adaptive":
        effort = effort or "high"
        return Thinking(True, effort, BUDGETS.get(effort))
    # No thinking field: an effort alone still says how hard to work.
    return Thinking(None, effort, None)


def clamp_effort(effort: str, accepted: tuple[str, ...]) -> str | None:
    """The highest accepted effort not above ``effort``, else the lowest accepted one."""
    if not accepted:
        return None
    rank = {name: i for i, name in enumerate(EFFORTS)}
    ask = rank.get(effort, rank["medium"])
    fitting = [e for e in accepted if rank.get(e, 0) <= ask]
    if fitting:
        return max(fitting, key=lambda e: rank.get(e, 0))
    return min(accepted, key=lambda e: rank.get(e, 0))


def _merge(body: dict[str, Any], fields: Mapping[str, Any]) -> None:
    for key, value in fields.items():
        if isinstance(value, Mapping) and isinstance(body.get(key), dict):
            _merge(body[key], value)
        else:
            body[key] = dict(value) if isinstance(value, Mapping) else value


def _reasoning(body: dict[str, Any], thinking: Thinking, target: ChatTarget) -> None:
    switch = target.reasoning
    if switch is not None:
        if thinking.enabled is True:
            _merge(body, switch.on)
            if switch.budget_field and thinking.budget:
                body[switch.budget_field] = thinking.budget
        elif thinking.enabled is False:
            _merge(body, switch.off)
        return
    if thinking.enabled is not False and thinking.effort and thinking.effort != "none":
        effort = clamp_effort(thinking.effort, target.efforts)
        if effort is not None:
            body["reasoning_effort"] = effort


@dataclass(slots=True)
class _Tools:
    chat: list[dict[str, Any]] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)  # the client's -> chat's
    server: set[str] = field(default_factory=set)


def _tools(request: Mapping[str, Any], target: ChatTarget, dropped: set[str]) -> _Tools:
    tools = _Tools()
    declared = request.get("tools")
    if declared is None:
        return tools
    if not isinstance(declared, list):
        raise invalid("tools: Input should be a valid list")
    for i, tool in enumerate(declared):
        if not isinstance(tool, dict):
            raise invalid(f"tools.{i}: Input should be a valid object")
        kind, name = tool.get("type"), tool.get("name")
        if kind not in (None, "custom"):
            tools.server.add(name if isinstance(name, str) else str(kind))
            dropped.add(f"server tool {kind}")
            continue
        if not isinstance(name, str) or not name:
            raise invalid(f"tools.{i}.name: Field required")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            schema = {"type": "object", "properties": {}}
        chat = chat_tool_name(name, target.max_tool_name)
        tools.names[name] = chat
        function: dict[str, Any] = {"name": chat, "parameters": schema}
        if isinstance(tool.get("description"), str) and tool["description"]:
            function["description"] = tool["description"]
        tools.chat.append({"type": "function", "function": function})
    return tools


def _tool_choice(body: dict[str, Any], choice: Any, tools: _Tools) -> None:
    if not isinstance(choice, dict):
        if choice is not None:
            raise invalid("tool_choice: Input should be a valid object")
        return
    kind = choice.get("type")
    if kind == "tool":
        name = choice.get("name")
        if name in tools.server:
            raise invalid(
                f"tool_choice names the server tool {name!r}, which this upstream cannot run"
            )
        if not isinstance(name, str) or name not in tools.names:
            raise invalid(f"tool_choice.name: no tool named {name!r} in tools")
        body["tool_choice"] = {"type": "function", "function": {"name": tools.names[name]}}
    elif kind in ("auto", "any", "none"):
        if tools.chat:
            body["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[kind]
    else:
        raise invalid("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'")
    if choice.get("disable_parallel_tool_use") is True and tools.chat and kind != "none":
        body["parallel_tool_calls"] = False


def _response_format(request: Mapping[str, Any]) -> dict[str, Any] | None:
    config = request.get("output_config")
    fmt = config.get("format") if isinstance(config, dict) else None
    fmt = fmt if fmt is not None else request.get("output_format")  # the beta's spelling
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = fmt.get("schema")
        if isinstance(schema, dict):
            return {"type": "json_schema", "json_schema": {"name": "response", "schema": schema}}
    return None


def _sampling(body: dict[str, Any], request: Mapping[str, Any], target: ChatTarget) -> None:
    max_tokens = request.get("max_tokens")
    if max_tokens is not None:
        if not (_int(max_tokens) and max_tokens > 0):
            raise invalid("max_tokens: Input should be a positive integer")
        body["max_tokens"] = max_tokens
    for key in ("temperature", "top_p", "top_k"):
        value = request.get(key)
        if value is None:
            continue
        if not _number(value):
            raise invalid(f"{key}: Input should be a valid number")
        if key != "top_k" or target.top_k:
            body[key] = value


def _stops(request: Mapping[str, Any]) -> tuple[str, ...]:
    stops = request.get("stop_sequences")
    if stops is None:
        return ()
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise invalid("stop_sequences: Input should be a valid list of strings")
    return tuple(stops)


def to_chat(request: Any, target: ChatTarget | None = None) -> ChatRequest:
    """The chat request for a Messages request (the parsed JSON body)."""
    target = target or ChatTarget()
    if not isinstance(request, dict):
        raise invalid("the request body should be a JSON object")
    model = request.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("model: Field required")
    if "messages" not in request:
        raise invalid("messages: Field required")
    if request["messages"] == []:
        raise invalid("messages: at least one message is required")
    dropped = {f"field {key}" for key in request if key not in _HANDLED}
    tools = _tools(request, target, dropped)
    ctx = Context(
        tool_name=lambda name: tools.names.get(name) or chat_tool_name(name, target.max_tool_name),
        system_role=target.system_role,
        replay_reasoning=target.replay_reasoning,
        cache_control=target.cache_control,
        dropped=dropped,
    )
    messages = chat_messages(request["messages"], ctx)
    system = system_content(request.get("system"), ctx)
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    body: dict[str, Any] = {"model": model, "messages": messages}
    _sampling(body, request, target)
    stops = _stops(request)
    if stops:
        body["stop"] = list(stops)
    if tools.chat:
        body["tools"] = tools.chat
    _tool_choice(body, request.get("tool_choice"), tools)
    _reasoning(body, thinking_of(request), target)
    response_format = _response_format(request)
    if response_format is not None:
        body["response_format"] = response_format
    metadata = request.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        body["user"] = metadata["user_id"]
    stream = request.get("stream") is True
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if request.get("top_k") is not None and not target.top_k:
        dropped.add("top_k")
    back = {chat: name for name, chat in tools.names.items() if chat != name}
    return ChatRequest(body, model, stream, stops, back, tuple(sorted(dropped)))
