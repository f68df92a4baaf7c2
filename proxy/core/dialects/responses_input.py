"""A Responses request's input items as chat messages.

Chat's rules are kept however the items come: one leading system message (the
instructions and the developer messages before the conversation), one assistant
message per turn (an answer seamline streamed as several items was one chat message
upstream), every tool result right after the calls it answers, and images (which
chat takes from users only) after the results that held them. Reasoning goes back as
the turn's ``reasoning_content``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from proxy.core.dialects.responses_common import JSON, RequestError, ToolRef
from proxy.core.dialects.responses_tools import CUSTOM_ARGUMENT, chat_name

# Server-side records of hosted tools: their effect is in the messages after them, so
# they are left out of the history. Client-run tools' calls are refused instead.
_SKIPPED_ITEMS = frozenset({
    "web_search_call", "file_search_call", "image_generation_call", "code_interpreter_call",
    "mcp_list_tools", "tool_search_call", "tool_search_output",
})  # fmt: skip
_TEXT_PARTS = frozenset({"input_text", "output_text", "text", "summary_text", "reasoning_text"})


def _text_of(part: Mapping[str, Any], param: str) -> str:
    text = part.get("text", part.get("refusal"))
    if not isinstance(text, str):
        raise RequestError("A text part needs its `text`.", f"{param}.text", "invalid_type")
    return text


def _chat_part(part: Any, param: str) -> JSON:
    """One input content part in chat's words."""
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if not isinstance(part, Mapping):
        raise RequestError("A content part must be an object.", param, "invalid_type")
    kind = part.get("type")
    if kind in _TEXT_PARTS or kind == "refusal":
        return {"type": "text", "text": _text_of(part, param)}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise RequestError(
                "Images by file_id are not supported here; send an image_url (a URL or a "
                "data: URL).",
                f"{param}.image_url",
                "unsupported_value",
            )
        image: JSON = {"url": url}
        if isinstance(part.get("detail"), str):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        if part.get("file_url") is not None:
            raise RequestError(
                "Files by URL are not supported here; send file_data.",
                f"{param}.file_url",
                "unsupported_value",
            )
        file = {k: part[k] for k in ("file_data", "file_id", "filename") if part.get(k)}
        return {"type": "file", "file": file}
    if kind == "input_audio":
        return {"type": "input_audio", "input_audio": part.get("input_audio")}
    raise RequestError(f"Content part type {kind!r} is not supported.", f"{param}.type")


def _chat_content(content: Any, param: str) -> str | list[JSON]:
    """A message's content for a user (or tool) message: text alone stays a string."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RequestError("content must be a string or an array.", param, "invalid_type")
    parts = [_chat_part(part, f"{param}[{i}]") for i, part in enumerate(content)]
    if len(parts) == 1 and parts[0]["type"] == "text":
        return str(parts[0]["text"])
    return parts


def _plain_text(content: Any, param: str) -> str:
    """The text of a system, developer or assistant message, which chat upstreams take
    as text only."""
    parts = _chat_content(content, param)
    if isinstance(parts, str):
        return parts
    if any(part["type"] != "text" for part in parts):
        raise RequestError(
            "Only text is supported in system, developer and assistant messages.",
            param,
            "unsupported_value",
        )
    return "".join(str(part["text"]) for part in parts)


def _reasoning_text(item: Mapping[str, Any]) -> str:
    for key in ("summary", "content"):
        parts = item.get(key)
        if isinstance(parts, list):
            texts = [
                p["text"]
                for p in parts
                if isinstance(p, Mapping) and isinstance(p.get("text"), str)
            ]
            if texts:
                return "\n\n".join(texts)
    return ""


class _Conversation:
    """Chat messages built item by item, keeping chat's rules: one leading system
    message, one assistant message per turn (its text, reasoning and tool calls, in
    the order the items gave them), and every tool result right after the calls it
    answers."""

    def __init__(self, outputs_ahead: set[str]) -> None:
        self.system: list[str] = []
        self.messages: list[JSON] = []
        self._started = False
        self._turn: JSON | None = None  # the assistant message being built
        self._reasoning: list[str] = []  # reasoning before the turn's first text or call
        self._outputs_ahead = outputs_ahead
        self._awaiting: set[str] = set()  # calls whose results come later in the input
        self._deferred: list[JSON] = []  # messages that came between calls and results
        self._images: list[JSON] = []  # images of tool results, for a user message after

    def _add(self, message: JSON) -> None:
        self._started = True
        if self._awaiting:
            self._deferred.append(message)
        else:
            self.messages.append(message)

    def _assistant(self) -> JSON:
        if self._turn is None:
            self._turn = {"role": "assistant", "content": None}
            self._add(self._turn)
        if self._reasoning:
            self._think_in(self._turn)
        return self._turn

    def _think_in(self, turn: JSON) -> None:
        # DeepSeek's thinking mode wants it back with tool calls; the others ignore it
        # (see without_reasoning for the upstreams that refuse it). Joined as it was
        # split: one chat answer's reasoning is one text however its items cut it.
        turn["reasoning_content"] = str(turn.get("reasoning_content") or "") + "".join(
            self._reasoning
        )
        self._reasoning = []

    def _end_turn(self) -> None:
        if self._turn is not None and self._reasoning:
            self._think_in(self._turn)  # the model thought on after it spoke
        # Reasoning of a turn that said nothing changes nothing that follows.
        self._reasoning = []
        self._turn = None

    def system_text(self, text: str) -> None:
        self._end_turn()
        if not self._started:
            self.system.append(text)
        else:
            self._add({"role": "system", "content": text})

    def user(self, content: str | list[JSON]) -> None:
        self._end_turn()
        self._add({"role": "user", "content": content})

    def assistant_text(self, text: str) -> None:
        turn = self._assistant()
        turn["content"] = str(turn["content"] or "") + text

    def reasoning(self, text: str) -> None:
        if not text:
            return
        if self._turn is not None:
            self._turn["reasoning_content"] = str(self._turn.get("reasoning_content") or "") + text
        else:
            self._reasoning.append(text)

    def tool_call(self, call_id: str, name: str, arguments: str) -> None:
        calls = self._assistant().setdefault("tool_calls", [])
        calls.append(
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        )
        if call_id in self._outputs_ahead:
            self._awaiting.add(call_id)

    def tool_result(self, call_id: str, content: str, images: list[JSON]) -> None:
        self._end_turn()
        self._started = True
        self.messages.append({"role": "tool", "tool_call_id": call_id, "content": content})
        self._awaiting.discard(call_id)
        self._images.extend(images)
        if not self._awaiting:
            self._settle()

    def _settle(self) -> None:
        if self._images:
            # Chat takes images from users only: the tool's images follow its results.
            self.messages.append({"role": "user", "content": self._images})
            self._images = []
        self.messages.extend(self._deferred)
        self._deferred = []

    def result(self) -> list[JSON]:
        self._end_turn()
        self._awaiting.clear()
        self._settle()
        head = [{"role": "system", "content": "\n\n".join(self.system)}] if self.system else []
        return head + self.messages


def _tool_result(output: Any, param: str) -> tuple[str, list[JSON]]:
    """A tool result's text, and its images (which chat's tool messages cannot hold)."""
    if isinstance(output, str):
        return output, []
    if not isinstance(output, list):
        return json.dumps(output, ensure_ascii=False), []
    texts: list[str] = []
    images: list[JSON] = []
    for i, part in enumerate(output):
        chat = _chat_part(part, f"{param}[{i}]")
        if chat["type"] == "text":
            texts.append(str(chat["text"]))
        else:
            images.append(chat)
    return "".join(texts), images


def _call_id(item: Mapping[str, Any], param: str) -> str:
    call_id = item.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise RequestError(
            "A tool call needs its `call_id`.", f"{param}.call_id", "missing_required_parameter"
        )
    return call_id


def _arguments(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value if value is not None else {}, ensure_ascii=False)


def _add_item(conv: _Conversation, item: Any, param: str, names: Mapping[str, ToolRef]) -> None:
    if not isinstance(item, Mapping):
        raise RequestError("Each input item must be an object.", param, "invalid_type")
    kind = item.get("type") or ("message" if "role" in item else None)
    if kind == "message":
        role = item.get("role")
        content = item.get("content")
        where = f"{param}.content"
        if role in ("system", "developer"):
            conv.system_text(_plain_text(content, where))
        elif role == "user":
            conv.user(_chat_content(content, where))
        elif role == "assistant":
            conv.assistant_text(_plain_text(content, where))
        else:
            raise RequestError(f"Message role {role!r} is not supported.", f"{param}.role")
    elif kind in ("function_call", "custom_tool_call"):
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise RequestError(
                "A tool call needs its `name`.", f"{param}.name", "missing_required_parameter"
            )
        namespace = item.get("namespace") if isinstance(item.get("namespace"), str) else None
        if kind == "function_call":
            ref = ToolRef("function", name, namespace)
            arguments = _arguments(item.get("arguments"))
        else:
            ref = ToolRef("custom", name, namespace)
            text = item.get("input")
            arguments = json.dumps(
                {CUSTOM_ARGUMENT: text if isinstance(text, str) else ""}, ensure_ascii=False
            )
        conv.tool_call(_call_id(item, param), chat_name(names, ref), arguments)
    elif kind in ("function_call_output", "custom_tool_call_output"):
        content, images = _tool_result(item.get("output"), f"{param}.output")
        conv.tool_result(_call_id(item, param), content, images)
    elif kind == "reasoning":
        conv.reasoning(_reasoning_text(item))
    elif kind in _SKIPPED_ITEMS or kind == "additional_tools":
        return
    else:
        raise RequestError(
            f"Input items of type {kind!r} are not supported by this upstream.",
            f"{param}.type",
            "unsupported_value",
        )


def input_items(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str):
        return [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": value}]}
        ]
    if not isinstance(value, list):
        raise RequestError("input must be a string or an array of items.", "input", "invalid_type")
    return value


def chat_messages(
    instructions: str | None,
    items: Sequence[Any],
    names: Mapping[str, ToolRef],
    first_input: int = 0,
) -> list[JSON]:
    """The chat messages for ``instructions`` and the ``items`` (history, then input,
    whose first is at ``first_input``: errors name ``input[i]`` from there)."""
    outputs_ahead = {
        item["call_id"]
        for item in items
        if isinstance(item, Mapping)
        and item.get("type") in ("function_call_output", "custom_tool_call_output")
        and isinstance(item.get("call_id"), str)
    }
    conv = _Conversation(outputs_ahead)
    if instructions:
        conv.system_text(instructions)
    for i, item in enumerate(items):
        where = f"input[{i - first_input}]" if i >= first_input else "previous_response_id"
        _add_item(conv, item, where, names)
    return conv.result()
