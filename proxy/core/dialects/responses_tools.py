"""Responses tools and ``tool_choice`` as a chat-completions upstream takes them.

Function tools go from flat to nested; a ``namespace`` (Codex's groups of tools) is
flattened to one function per child, named ``<namespace>__<child>``; a custom
(freeform) tool such as Codex's ``apply_patch`` becomes a function of one string
argument, ``input``. The map from chat names back to what they stand for travels with
the translated request, so the answer can say ``custom_tool_call`` and ``namespace``
again. Hosted tools (web search, file search, code interpreter...) run on OpenAI's
side only: they are left out and listed, and refused only when the request depends on
one, because Codex sends ``web_search`` on every turn.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from proxy.core.dialects.responses_common import JSON, RequestError, ToolRef

CUSTOM_ARGUMENT = "input"
# What chat-completions upstreams (OpenAI's rule, which the others copy) accept as a
# function name.
_NAME_OK = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_NAME_BAD_CHARS = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True, slots=True)
class ToolPlan:
    """The chat side of a request's tools."""

    tools: list[JSON]
    names: dict[str, ToolRef]  # chat function name -> the client's tool
    dropped: tuple[str, ...]  # tool types left out, in the order the client gave them
    tool_choice: Any  # None: leave the upstream's default


def qualified_name(namespace: str, name: str) -> str:
    """The flat name of a namespace's child, before sanitizing."""
    if name.startswith(namespace) or name.startswith("mcp__"):
        # Already qualified (Codex's MCP tools carry their server in the name).
        return name
    # Codex's MCP namespaces (``mcp__server__``) and children (``_search``) already
    # carry their separator.
    sep = "" if namespace.endswith("_") or name.startswith("_") else "__"
    return f"{namespace}{sep}{name}"


def _sanitize(name: str) -> str:
    if _NAME_OK.match(name):
        return name
    clean = _NAME_BAD_CHARS.sub("_", name) or "tool"
    if len(clean) <= 64:
        return clean
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{clean[:55]}_{digest}"


class _Names:
    """Chat names handed out so far: every client tool gets a distinct valid one."""

    def __init__(self) -> None:
        self.refs: dict[str, ToolRef] = {}
        self.by_ref: dict[ToolRef, str] = {}

    def add(self, ref: ToolRef) -> str | None:
        """The chat name for ``ref``; None when the same tool was declared already."""
        if ref in self.by_ref:
            return None
        wanted = qualified_name(ref.namespace, ref.name) if ref.namespace else ref.name
        name = base = _sanitize(wanted)
        n = 2
        while name in self.refs:
            suffix = f"_{n}"
            name = base[: 64 - len(suffix)] + suffix
            n += 1
        self.refs[name] = ref
        self.by_ref[ref] = name
        return name


def _described(description: Any, fallback: Any = None) -> str | None:
    for text in (description, fallback):
        if isinstance(text, str) and text:
            return text
    return None


def _function(name: str, tool: Mapping[str, Any], fallback_description: Any) -> JSON:
    fn: JSON = {"name": name}
    description = _described(tool.get("description"), fallback_description)
    if description is not None:
        fn["description"] = description
    parameters = tool.get("parameters")
    # Some upstreams refuse a function without parameters; {} is what "none" means.
    fn["parameters"] = (
        parameters if isinstance(parameters, dict) else {"type": "object", "properties": {}}
    )
    if tool.get("strict") is not None:
        # Only when the client said so: chat's default (false) differs from the
        # Responses default (true), and non-OpenAI upstreams ignore or reject it.
        fn["strict"] = tool["strict"]
    return {"type": "function", "function": fn}


def _custom(name: str, tool: Mapping[str, Any], fallback_description: Any) -> JSON:
    description = _described(tool.get("description"), fallback_description) or ""
    fmt = tool.get("format")
    if isinstance(fmt, Mapping) and fmt.get("type") == "grammar":
        # The upstream cannot constrain the text to the grammar; the model can still
        # follow it when it is told.
        syntax = fmt.get("syntax", "lark")
        description += (
            f"\n\nThe `{CUSTOM_ARGUMENT}` argument must follow this {syntax} grammar:\n"
            f"{fmt.get('definition', '')}"
        )
    fn: JSON = {
        "name": name,
        "parameters": {
            "type": "object",
            "properties": {
                CUSTOM_ARGUMENT: {
                    "type": "string",
                    "description": "The raw freeform input of the tool.",
                }
            },
            "required": [CUSTOM_ARGUMENT],
            "additionalProperties": False,
        },
    }
    if description.strip():
        fn["description"] = description.strip()
    return {"type": "function", "function": fn}


def _tool_name(tool: Mapping[str, Any], param: str) -> str:
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise RequestError("A tool needs a non-empty `name`.", param, "missing_required_parameter")
    return name


def _convert(tool: Any, param: str, names: _Names, out: list[JSON], dropped: list[str]) -> None:
    if not isinstance(tool, Mapping):
        raise RequestError("Each tool must be an object.", param, "invalid_type")
    kind = tool.get("type")
    if kind == "function":
        ref = ToolRef("function", _tool_name(tool, f"{param}.name"))
        if (name := names.add(ref)) is not None:
            out.append(_function(name, tool, None))
    elif kind == "custom":
        ref = ToolRef("custom", _tool_name(tool, f"{param}.name"))
        if (name := names.add(ref)) is not None:
            out.append(_custom(name, tool, None))
    elif kind == "namespace":
        namespace = _tool_name(tool, f"{param}.name")
        children = tool.get("tools")
        if not isinstance(children, list):
            raise RequestError("A namespace needs its `tools`.", f"{param}.tools", "invalid_type")
        for j, child in enumerate(children):
            where = f"{param}.tools[{j}]"
            if not isinstance(child, Mapping) or child.get("type") not in ("function", "custom"):
                raise RequestError(
                    "A namespace holds function and custom tools only.", where, "invalid_value"
                )
            ref = ToolRef(child["type"], _tool_name(child, f"{where}.name"), namespace)
            if (name := names.add(ref)) is None:
                continue
            build = _function if ref.kind == "function" else _custom
            out.append(build(name, child, tool.get("description")))
    elif isinstance(kind, str) and kind:
        # A hosted tool (web_search, file_search, code_interpreter, image_generation,
        # computer_use, mcp, local_shell, shell, apply_patch, tool_search...) or one
        # newer than this code: no chat upstream can run it.
        dropped.append(kind)
    else:
        raise RequestError(
            "Each tool needs a `type`.", f"{param}.type", "missing_required_parameter"
        )


def _choice_ref(choice: Mapping[str, Any], names: _Names) -> str | None:
    """The chat name a function or custom ``tool_choice`` names, if declared."""
    name = choice.get("name")
    namespace = choice.get("namespace")
    candidates = [
        (ref, chat) for ref, chat in names.by_ref.items() if ref.kind == choice.get("type")
    ]
    for ref, chat in candidates:
        if ref.name == name and ref.namespace == namespace:
            return chat
    if namespace is None:
        # A namespace's child named bare, or by its flat name.
        for ref, chat in candidates:
            if ref.namespace and name in (ref.name, qualified_name(ref.namespace, ref.name)):
                return chat
    return None


def _tool_choice(
    choice: Any, names: _Names, tools: list[JSON], dropped: Sequence[str]
) -> tuple[Any, list[JSON]]:
    if choice is None or choice == "auto":
        return None, tools
    if choice in ("none", "required"):
        if choice == "required" and not tools:
            raise RequestError(
                "tool_choice is 'required' but every tool given is a hosted tool "
                f"({', '.join(dropped) or 'none given'}) that this upstream cannot run.",
                "tool_choice",
                "unsupported_value",
            )
        return choice, tools
    if not isinstance(choice, Mapping):
        raise RequestError("tool_choice is not one this API takes.", "tool_choice")
    kind = choice.get("type")
    if kind in ("function", "custom"):
        chat_name = _choice_ref(choice, names)
        if chat_name is None:
            raise RequestError(
                f"tool_choice names the {kind} tool {choice.get('name')!r}, which is not "
                "among the tools.",
                "tool_choice",
            )
        return {"type": "function", "function": {"name": chat_name}}, tools
    if kind == "allowed_tools":
        return _allowed(choice, names, tools)
    raise RequestError(
        f"tool_choice requires the hosted tool {kind!r}, which this upstream cannot run.",
        "tool_choice",
        "unsupported_value",
    )


def _allowed(choice: Mapping[str, Any], names: _Names, tools: list[JSON]) -> tuple[Any, list[JSON]]:
    """``allowed_tools`` as chat upstreams understand it: only those tools offered."""
    mode = choice.get("mode", "auto")
    if mode not in ("auto", "required"):
        raise RequestError("allowed_tools mode is 'auto' or 'required'.", "tool_choice.mode")
    allowed = choice.get("tools")
    if not isinstance(allowed, list):
        raise RequestError("allowed_tools needs its `tools`.", "tool_choice.tools", "invalid_type")
    keep: set[str] = set()
    for entry in allowed:
        if isinstance(entry, Mapping) and entry.get("type") in ("function", "custom"):
            chat_name = _choice_ref(entry, names)
            if chat_name is None:
                raise RequestError(
                    f"allowed_tools names {entry.get('name')!r}, which is not among the tools.",
                    "tool_choice.tools",
                )
            keep.add(chat_name)
    kept = [tool for tool in tools if tool["function"]["name"] in keep]
    if mode == "required" and not kept:
        raise RequestError(
            "allowed_tools requires a tool, and every one allowed is a hosted tool that "
            "this upstream cannot run.",
            "tool_choice",
            "unsupported_value",
        )
    return (mode if kept else "none"), kept


def translate_tools(tools: Any, tool_choice: Any, extra: Sequence[Any] = ()) -> ToolPlan:
    """The chat ``tools`` and ``tool_choice`` for a Responses request's; ``extra`` are
    tools declared in ``additional_tools`` input items (Codex Desktop)."""
    if tools is not None and not isinstance(tools, list):
        raise RequestError("tools must be an array.", "tools", "invalid_type")
    names = _Names()
    out: list[JSON] = []
    dropped: list[str] = []
    for i, tool in enumerate(tools or []):
        _convert(tool, f"tools[{i}]", names, out, dropped)
    for i, tool in enumerate(extra):
        _convert(tool, f"input.additional_tools[{i}]", names, out, dropped)
    chat_choice, out = _tool_choice(tool_choice, names, out, dropped)
    return ToolPlan(out, names.refs, tuple(dropped), chat_choice)


def chat_name(names: Mapping[str, ToolRef], ref: ToolRef) -> str:
    """The chat name of a tool call in the history: the one the request declared, or,
    for a tool no longer declared, the name it would have had."""
    for chat, known in names.items():
        if known == ref:
            return chat
    return _sanitize(qualified_name(ref.namespace, ref.name) if ref.namespace else ref.name)
