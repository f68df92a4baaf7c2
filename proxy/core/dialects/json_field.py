"""The text of one JSON string field, decoded while the JSON is still arriving.

A bridged custom tool's call streams as function arguments, ``{"input": "..."}``, in
pieces cut anywhere (inside an escape, between the halves of a surrogate pair); its
Responses events carry the decoded ``input`` text as it comes. Only the common shape is
streamed, ``input`` as the object's first key; anything else waits for :func:`final`.
"""

from __future__ import annotations

import json
from typing import Any

_SPACE = " \t\r\n"
_HEX = frozenset("0123456789abcdefABCDEF")


def _safe_end(raw: str) -> int:
    """How much of ``raw`` (string body, no closing quote) decodes on its own: not a
    trailing half escape, nor a high surrogate whose low half may follow. One pass:
    ``raw`` is only what the last call held back plus the new piece."""
    i = safe = 0
    n = len(raw)
    while i < n:
        if raw[i] != "\\":
            i += 1
            safe = i
            continue
        if i + 1 >= n:
            return i
        if raw[i + 1] != "u":
            i += 2
            safe = i
            continue
        if i + 6 > n:
            return i
        code = raw[i + 2 : i + 6]
        if not all(c in _HEX for c in code):
            return n  # not JSON: the decoder says so
        if 0xD800 <= int(code, 16) <= 0xDBFF:
            # A low half may follow, and the two decode to one character.
            if i + 6 == n or (
                raw[i + 6] == "\\" and (i + 7 >= n or (raw[i + 7] == "u" and i + 12 > n))
            ):
                return i
            if raw[i + 6] == "\\" and raw[i + 7] == "u":
                i += 12
                safe = i
                continue
        i += 6
        safe = i
    return safe


class JsonField:
    """Feed argument text; get back the newly decoded characters of ``field``."""

    def __init__(self, field: str) -> None:
        self._prefix = ["{", json.dumps(field), ":", '"']
        self._step = 0  # index into _prefix
        self._matched = 0  # characters of _prefix[_step] seen
        self.streaming = True  # False once the text is not of the streamed shape
        self._raw: list[str] = []  # undecoded string body held back
        self._escaped = False
        self.closed = False  # the closing quote was seen
        self.text = ""  # decoded so far

    def feed(self, piece: str) -> str:
        if not self.streaming or self.closed:
            return ""
        i = 0
        n = len(piece)
        while self._step < len(self._prefix) and i < n:
            c = piece[i]
            token = self._prefix[self._step]
            if self._matched == 0 and c in _SPACE:
                i += 1
                continue
            if c != token[self._matched]:
                self.streaming = False
                return ""
            self._matched += 1
            i += 1
            if self._matched == len(token):
                self._step += 1
                self._matched = 0
        if self._step < len(self._prefix):
            return ""
        return self._body(piece[i:])

    def _body(self, piece: str) -> str:
        end = -1
        escaped = self._escaped
        for k, c in enumerate(piece):
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                end = k
                break
        self._escaped = escaped
        if end != -1:
            self.closed = True
            piece = piece[:end]
        self._raw.append(piece)
        raw = "".join(self._raw)
        cut = len(raw) if self.closed else _safe_end(raw)
        try:
            new = json.loads('"' + raw[:cut] + '"', strict=False) if cut else ""
        except ValueError:
            self.streaming = False
            return ""
        self._raw = [raw[cut:]] if cut < len(raw) else []
        self.text += new
        return str(new)


def final(arguments: str, field: str) -> str:
    """The field's text in complete arguments; the arguments themselves when they are
    not an object holding it as a string (a model that sent the raw text)."""
    try:
        value: Any = json.loads(arguments, strict=False)
    except ValueError:
        return arguments
    if isinstance(value, dict) and isinstance(value.get(field), str):
        return str(value[field])
    if isinstance(value, str):
        return value
    return arguments
