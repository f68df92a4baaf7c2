"""JSON <-> SSE for upstreams that answer in the other form than was asked.

Pure functions on parsed payloads; no I/O. A streaming client answered with one JSON
``chat.completion`` gets it as a chunk stream; a non-streaming client answered with
an event stream (stream-only models, or ``force_stream`` accounts) gets the chunks
merged into one completion.
"""

from __future__ import annotations

import json
from typing import Any

from .repair import DONE_EVENT, data_block


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def completion_to_sse(body: dict[str, Any], include_usage: bool) -> bytes:
    """A ``chat.completion`` (or ``text_completion``) as the stream it would have been."""
    chat = body.get("object") != "text_completion"
    base = {
        "id": body.get("id", ""),
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": body.get("created", 0),
        "model": body.get("model", ""),
    }
    if "system_fingerprint" in body:
        base["system_fingerprint"] = body["system_fingerprint"]
    out: list[bytes] = []
    for i, choice in enumerate(body.get("choices") or []):
        if not isinstance(choice, dict):
            continue
        index = choice.get("index", i)
        if chat:
            message = choice.get("message") or {}
            delta: dict[str, Any] = {"role": message.get("role", "assistant")}
            for key in ("content", "reasoning_content", "refusal"):
                if message.get(key) is not None:
                    delta[key] = message[key]
            if message.get("tool_calls"):
                delta["tool_calls"] = [
                    {**call, "index": n} for n, call in enumerate(message["tool_calls"])
                ]
            first = {"index": index, "delta": delta, "finish_reason": None}
            last = {"index": index, "delta": {}, "finish_reason": choice.get("finish_reason")}
        else:
            first = {"index": index, "text": choice.get("text", ""), "finish_reason": None}
            last = {"index": index, "text": "", "finish_reason": choice.get("finish_reason")}
        if choice.get("logprobs") is not None:
            first["logprobs"] = choice["logprobs"]
        out.append(data_block(_dumps({**base, "choices": [first]})))
        out.append(data_block(_dumps({**base, "choices": [last]})))
    if include_usage and body.get("usage") is not None:
        out.append(data_block(_dumps({**base, "choices": [], "usage": body["usage"]})))
    out.append(DONE_EVENT)
    return b"".join(out)


class Aggregator:
    """Merges stream chunks into one completion: content, reasoning, tool calls, usage."""

    def __init__(self) -> None:
        self.head: dict[str, Any] = {}
        self.choices: dict[int, dict[str, Any]] = {}
        self.usage: Any = None
        self.chat = True

    def add(self, chunk: Any) -> None:
        if not isinstance(chunk, dict):
            return
        if not self.head:
            self.chat = chunk.get("object") != "text_completion"
            for key in ("id", "created", "model", "system_fingerprint"):
                if key in chunk:
                    self.head[key] = chunk[key]
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for raw in chunk.get("choices") or []:
            if isinstance(raw, dict):
                self._choice(raw)

    def _choice(self, raw: dict[str, Any]) -> None:
        index = raw.get("index", 0)
        choice = self.choices.setdefault(
            index, {"index": index, "parts": {}, "tools": {}, "finish_reason": None, "role": None}
        )
        if raw.get("finish_reason") is not None:
            choice["finish_reason"] = raw["finish_reason"]
        if raw.get("logprobs") is not None:
            choice["logprobs"] = raw["logprobs"]
        if not self.chat:
            _append(choice["parts"], "text", raw.get("text"))
            return
        delta = raw.get("delta") or {}
        if not isinstance(delta, dict):
            return
        choice["role"] = delta.get("role") or choice["role"]
        for key in ("content", "reasoning_content", "refusal"):
            _append(choice["parts"], key, delta.get(key))
        for call in delta.get("tool_calls") or []:
            if not isinstance(call, dict):
                continue
            slot = choice["tools"].setdefault(
                call.get("index", len(choice["tools"])),
                {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
            )
            slot["id"] = call.get("id") or slot["id"]
            slot["type"] = call.get("type") or slot["type"]
            fn = call.get("function") or {}
            if isinstance(fn, dict):
                slot["function"]["name"] += fn.get("name") or ""
                slot["function"]["arguments"] += fn.get("arguments") or ""

    @property
    def finished(self) -> bool:
        return any(c["finish_reason"] is not None for c in self.choices.values())

    def result(self) -> dict[str, Any]:
        choices = []
        for index in sorted(self.choices):
            c = self.choices[index]
            if self.chat:
                message: dict[str, Any] = {"role": c["role"] or "assistant"}
                message["content"] = c["parts"].get("content")
                for key in ("reasoning_content", "refusal"):
                    if key in c["parts"]:
                        message[key] = c["parts"][key]
                if c["tools"]:
                    message["tool_calls"] = [c["tools"][k] for k in sorted(c["tools"])]
                choice: dict[str, Any] = {"index": index, "message": message}
            else:
                choice = {"index": index, "text": c["parts"].get("text", "")}
            choice["finish_reason"] = c["finish_reason"]
            if "logprobs" in c:
                choice["logprobs"] = c["logprobs"]
            choices.append(choice)
        out = {
            "id": self.head.get("id", ""),
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.head.get("created", 0),
            "model": self.head.get("model", ""),
            "choices": choices,
        }
        if "system_fingerprint" in self.head:
            out["system_fingerprint"] = self.head["system_fingerprint"]
        if self.usage is not None:
            out["usage"] = self.usage
        return out


def _append(parts: dict[str, str], key: str, value: Any) -> None:
    if isinstance(value, str):
        parts[key] = parts.get(key, "") + value
