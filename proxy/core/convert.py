"""JSON <-> SSE for upstreams that answer in the other form than was asked.

Pure functions on parsed payloads; no I/O. A streaming client answered with one JSON
``chat.completion`` gets it as a chunk stream; a non-streaming client answered with
an event stream (stream-only models, or ``force_stream`` accounts) gets the chunks
merged into one completion.
"""

from __future__ import annotations

import json
from typing import Any

from proxy.core.openai import DONE_EVENT
from proxy.core.shaper import data_block


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
            if isinstance(message.get("function_call"), dict):
                delta["function_call"] = message["function_call"]
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
        self._object_seen = False

    def add(self, chunk: Any) -> None:
        if not isinstance(chunk, dict):
            return
        # The first chunk with a value wins: Azure's first chunk (prompt_filter_results)
        # has an empty id, model and object.
        if not self._object_seen and chunk.get("object"):
            self._object_seen = True
            self.chat = chunk["object"] != "text_completion"
        for key in _HEAD:
            if chunk.get(key) and not self.head.get(key):
                self.head[key] = chunk[key]
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for raw in chunk.get("choices") or []:
            if isinstance(raw, dict):
                self._choice(raw)

    def _choice(self, raw: dict[str, Any]) -> None:
        index = raw.get("index")
        index = index if isinstance(index, int) else 0  # else unhashable or unsortable
        choice = self.choices.setdefault(
            index, {"index": index, "parts": {}, "tools": {}, "finish_reason": None, "role": None}
        )
        if raw.get("finish_reason") is not None:
            choice["finish_reason"] = raw["finish_reason"]
        if raw.get("logprobs") is not None:
            choice["logprobs"] = _merge_logprobs(choice.get("logprobs"), raw["logprobs"])
        if not self.chat:
            _append(choice["parts"], "text", raw.get("text"))
            return
        delta = raw.get("delta") or {}
        if not isinstance(delta, dict):
            return
        choice["role"] = delta.get("role") or choice["role"]
        for key in ("content", "reasoning_content", "refusal"):
            _append(choice["parts"], key, delta.get(key))
        if isinstance(delta.get("function_call"), dict):
            fc = choice.setdefault("function_call", {"name": "", "arguments": ""})
            _merge_function(fc, delta["function_call"])
        tools = choice["tools"]
        for call in delta.get("tool_calls") or []:
            if not isinstance(call, dict):
                continue
            slot = tools.setdefault(
                _tool_index(tools, call),
                {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
            )
            slot["id"] = call.get("id") or slot["id"]
            slot["type"] = call.get("type") or slot["type"]
            _merge_function(slot["function"], call.get("function"))

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
                if "function_call" in c:
                    message["function_call"] = c["function_call"]
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


_HEAD = ("id", "created", "model", "system_fingerprint")


def _tool_index(tools: dict[int, Any], call: dict[str, Any]) -> int:
    """The slot of a tool call piece: its index, or, for upstreams that send none,
    a new slot for a new id and the last slot for a piece without one."""
    index = call.get("index")
    if isinstance(index, int):
        return index
    last = max(tools, default=None)
    if last is None:
        return 0
    new_id = call.get("id")
    if new_id and tools[last]["id"] and new_id != tools[last]["id"]:
        return last + 1
    return last


def _merge_function(slot: dict[str, str], fn: Any) -> None:
    if not isinstance(fn, dict):
        return
    _append(slot, "name", fn.get("name"))
    args = fn.get("arguments")
    if isinstance(args, dict | list):
        # Some upstreams send the arguments as a JSON object, not as its text.
        args = _dumps(args).decode()
    _append(slot, "arguments", args)


def _merge_logprobs(old: Any, new: Any) -> Any:
    """Logprobs of consecutive chunks: their token lists concatenated."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    out = dict(old)
    for key, value in new.items():
        if isinstance(value, list) and isinstance(out.get(key), list):
            out[key] = out[key] + value
        elif value is not None or key not in out:
            out[key] = value
    return out
