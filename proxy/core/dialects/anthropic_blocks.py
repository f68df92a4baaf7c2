"""The content blocks of one Anthropic message, opened and closed one at a time.

Chat streams carry text, reasoning and several tool calls side by side (tool calls by
their ``index``); an Anthropic stream carries blocks one after another, each started,
given deltas and stopped before the next starts, with indices in order. ``Blocks``
turns the one into the other without holding anything back that it may pass on:

- a delta for the open block goes out at once;
- new content of another kind closes the open block and opens its own, unless the
  open block is a tool call whose arguments are not yet a complete JSON value: chat
  upstreams may interleave the fragments of two calls, and a closed block cannot take
  more, so what comes meanwhile waits (in order) until the arguments are complete or
  the answer ends. In the common case, one call after another, nothing waits.
- a tool call starts once both its id and its name are known (or, for upstreams that
  send no id, its first argument fragment, with an id made up here).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.core.dialects.anthropic_events import Event, make

TEXT, THINKING, TOOL = "text", "thinking", "tool_use"
_DELTA = {TEXT: ("text_delta", "text"), THINKING: ("thinking_delta", "thinking")}
_QUEUED, _OPEN, _CLOSED = 0, 1, 2


@dataclass(slots=True)
class Block:
    """One content block: its kind, its Anthropic index once started, what waits."""

    kind: str
    waiting: list[str] = field(default_factory=list)
    index: int = -1
    state: int = _QUEUED
    # Tool calls only.
    id: str | None = None
    name: str = ""
    arguments: list[str] = field(default_factory=list)

    def complete(self) -> bool:
        """Whether a tool call's arguments so far are a whole JSON object or array."""
        text = "".join(self.arguments).rstrip()
        if not text.endswith(("}", "]")):  # a cheap no before the parse
            return False
        try:
            return isinstance(json.loads(text), dict | list)
        except ValueError:
            return False


class Blocks:
    """Sequences content into Anthropic block events; see the module docstring."""

    def __init__(self, id_base: str, tool_names: Mapping[str, str]) -> None:
        self._id_base = id_base
        self._tool_names = tool_names
        self._open: Block | None = None
        self._queue: deque[Block] = deque()
        self._tools: dict[int, Block] = {}
        self._next = 0
        self.started = 0  # blocks started
        self.tools_started = 0
        self.lost = 0  # fragments for a tool call already closed, or never named

    def text(self, kind: str, piece: str, out: list[Event]) -> None:
        """A piece of text or of reasoning."""
        if self._open is not None and self._open.kind == kind and not self._queue:
            out.append(self._delta(self._open, piece))
            return
        if self._queue and self._queue[-1].kind == kind:
            self._queue[-1].waiting.append(piece)
        else:
            self._queue.append(Block(kind, [piece]))
        self._advance(out, final=False)

    def tool(self, index: int, call: dict[str, Any], out: list[Event]) -> None:
        """A piece of the tool call at chat ``index``: its id, name, argument fragment."""
        block = self._tools.get(index)
        if block is None:
            block = self._tools[index] = Block(TOOL)
            self._queue.append(block)
        call_id = call.get("id")
        if isinstance(call_id, str) and call_id and block.id is None:
            block.id = call_id
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        name = function.get("name")
        if isinstance(name, str) and block.state == _QUEUED:
            block.name += name
        fragment = function.get("arguments")
        if isinstance(fragment, dict | list):
            # Some upstreams send the arguments as a JSON value, not as its text.
            fragment = json.dumps(fragment, ensure_ascii=False)
        if isinstance(fragment, str) and fragment:
            if block.state == _OPEN:
                block.arguments.append(fragment)
                out.append(self._delta(block, fragment))
            elif block.state == _QUEUED:
                block.arguments.append(fragment)
                block.waiting.append(fragment)
            elif fragment.strip():
                self.lost += 1
        self._advance(out, final=False)

    def tool_index(self, call: dict[str, Any]) -> int:
        """The chat index of a tool call piece: its own, or for upstreams that send none,
        a new one for a new id and the last one for a piece without an id."""
        index = call.get("index")
        if isinstance(index, int) and not isinstance(index, bool):
            return index
        last = max(self._tools, default=None)
        if last is None:
            return 0
        new_id = call.get("id")
        if new_id and self._tools[last].id and new_id != self._tools[last].id:
            return last + 1
        return last

    def close_all(self, out: list[Event]) -> None:
        """The answer ended: start whatever waits, in order, and close every block."""
        self._advance(out, final=True)
        if self._open is not None:
            self._close(self._open, out)

    def _ready(self, block: Block, final: bool) -> bool:
        if block.kind != TOOL:
            return True
        return bool(block.name) and (block.id is not None or bool(block.arguments) or final)

    def _closable(self, block: Block, final: bool) -> bool:
        return final or block.kind != TOOL or block.complete()

    def _advance(self, out: list[Event], final: bool) -> None:
        while self._queue:
            head = self._queue[0]
            if final and head.kind == TOOL and not head.name:
                # A call never named cannot be run: what it held is lost.
                self._queue.popleft()
                head.state = _CLOSED
                self.lost += len(head.arguments)
                continue
            if not self._ready(head, final):
                return
            if self._open is not None:
                if not self._closable(self._open, final):
                    return
                self._close(self._open, out)
            self._start(self._queue.popleft(), out)

    def _start(self, block: Block, out: list[Event]) -> None:
        block.index = self._next
        self._next += 1
        block.state = _OPEN
        self._open = block
        self.started += 1
        content: dict[str, Any]
        if block.kind == TEXT:
            content = {"type": "text", "text": ""}
        elif block.kind == THINKING:
            # No signature can be made up: an empty one is what the SDKs accept.
            content = {"type": "thinking", "thinking": "", "signature": ""}
        else:
            self.tools_started += 1
            if block.id is None:
                block.id = f"toolu_{self._id_base}_{block.index}"
            name = self._tool_names.get(block.name, block.name)
            content = {"type": "tool_use", "id": block.id, "name": name, "input": {}}
        out.append(make("content_block_start", index=block.index, content_block=content))
        if block.waiting:
            out.append(self._delta(block, "".join(block.waiting)))
            block.waiting = []

    def _delta(self, block: Block, piece: str) -> Event:
        if block.kind == TOOL:
            delta = {"type": "input_json_delta", "partial_json": piece}
        else:
            name, key = _DELTA[block.kind]
            delta = {"type": name, key: piece}
        return make("content_block_delta", index=block.index, delta=delta)

    def _close(self, block: Block, out: list[Event]) -> None:
        block.state = _CLOSED
        self._open = None
        out.append(make("content_block_stop", index=block.index))
