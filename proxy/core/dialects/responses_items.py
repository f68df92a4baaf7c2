"""The output items a Responses stream builds, as they stand while it runs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxy.core.dialects.json_field import JsonField, final
from proxy.core.dialects.responses_common import JSON, ToolRef
from proxy.core.dialects.responses_tools import CUSTOM_ARGUMENT


class Message:
    """An assistant message item: its output_text and refusal parts."""

    __slots__ = ("id", "index", "lp_deltas", "lp_parts", "open", "parts", "status")

    def __init__(self, item_id: str) -> None:
        self.id = item_id
        self.index = -1  # its output_index, once added
        self.parts: dict[str, tuple[int, list[str]]] = {}  # output_text/refusal -> (index, text)
        self.lp_deltas: list[JSON] = []  # logprobs as the text events carry them
        self.lp_parts: list[JSON] = []  # as the output_text part does
        self.open = True
        self.status = "in_progress"

    def part(self, kind: str) -> JSON:
        text = "".join(self.parts[kind][1])
        if kind == "refusal":
            return {"type": "refusal", "refusal": text}
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": self.lp_parts}

    def item(self) -> JSON:
        content = [self.part(kind) for kind, _ in sorted(self.parts.items(), key=lambda p: p[1][0])]
        return {
            "id": self.id, "type": "message", "status": self.status, "role": "assistant",
            "content": content,
        }  # fmt: skip


class Reasoning:
    """A reasoning item, its text as one summary part."""

    __slots__ = ("id", "index", "open", "status", "text")

    def __init__(self, item_id: str) -> None:
        self.id = item_id
        self.index = -1  # its output_index, once added
        self.text: list[str] = []
        self.open = True
        self.status = "in_progress"

    def item(self) -> JSON:
        summary = [{"type": "summary_text", "text": "".join(self.text)}] if self.text else []
        return {"id": self.id, "type": "reasoning", "summary": summary}


class Call:
    """A tool call: a function_call item, or a custom_tool_call for a bridged custom tool."""

    __slots__ = (
        "args", "call_id", "field", "id", "index", "name", "open", "pending", "raw_id", "ref",
        "sent", "status",
    )  # fmt: skip

    def __init__(self) -> None:
        self.raw_id: str | None = None  # the upstream's id, the first one it gave
        self.call_id: str | None = None
        self.name = ""
        self.pending = ""  # arguments not yet sent: the item is not open
        self.args: list[str] = []
        self.sent: list[str] = []  # custom input text sent in deltas
        self.ref = ToolRef("function", "")
        self.field: JsonField | None = None
        self.id = ""
        self.index: int | None = None  # its output_index, once added
        self.open = False
        self.status = "in_progress"

    @property
    def custom(self) -> bool:
        return self.ref.kind == "custom"

    def item(self) -> JSON:
        arguments = "".join(self.args)
        if self.custom:
            out: JSON = {
                "id": self.id, "type": "custom_tool_call", "status": self.status,
                "call_id": self.call_id, "name": self.ref.name,
                "input": final(arguments, CUSTOM_ARGUMENT),
            }  # fmt: skip
        else:
            out = {
                "id": self.id, "type": "function_call", "status": self.status,
                "call_id": self.call_id, "name": self.ref.name, "arguments": arguments,
            }  # fmt: skip
        if self.ref.namespace is not None:
            out["namespace"] = self.ref.namespace
        return out


Output = Message | Reasoning | Call


def logprob_entries(raw: Any) -> tuple[list[JSON], list[JSON]]:
    """A chunk's ``logprobs.content`` as the text delta event and the output_text part
    carry them."""
    entries = raw.get("content") if isinstance(raw, Mapping) else None
    deltas: list[JSON] = []
    parts: list[JSON] = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("token"), str):
            continue
        token = entry["token"]
        tops = [t for t in entry.get("top_logprobs") or [] if isinstance(t, Mapping)]
        deltas.append({
            "token": token, "logprob": entry.get("logprob", 0.0),
            "top_logprobs": [{"token": t.get("token"), "logprob": t.get("logprob")} for t in tops],
        })  # fmt: skip
        parts.append({
            "token": token, "logprob": entry.get("logprob", 0.0),
            "bytes": entry.get("bytes") or list(token.encode()),
            "top_logprobs": [
                {"token": t.get("token", ""), "logprob": t.get("logprob", 0.0),
                 "bytes": t.get("bytes") or list(str(t.get("token", "")).encode())}
                for t in tops
            ],
        })  # fmt: skip
    return deltas, parts


def delta_text(value: Any) -> str:
    """Delta text: a string, or (Mistral) a list of text parts."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(
            p["text"] for p in value if isinstance(p, Mapping) and isinstance(p.get("text"), str)
        )
    return ""
