"""Reading one TOML table: every error worded the same way, naming file and key."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, TypeVar

from .model import ConfigError

T = TypeVar("T")
E = TypeVar("E", bound=StrEnum)

_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def key_part(name: str) -> str:
    """A key as TOML would spell it: quoted (one line, escaped) unless it is a bare key."""
    return name if _BARE_KEY.fullmatch(name) else json.dumps(name)


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return _TYPE_NAMES.get(type(value), type(value).__name__)


class Reader:
    """Takes keys out of one TOML table, wording every error the same way."""

    def __init__(self, path: str, table: Mapping[str, Any], where: str) -> None:
        self.path = path
        self.table = dict(table)
        self.where = where

    def key(self, name: str) -> str:
        part = key_part(name)
        return f"{self.where}.{part}" if self.where else part

    def fail(self, name: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.path}: {self.key(name)}: {problem}")

    def get(self, name: str, kind: type[T], default: T) -> T:
        if name not in self.table:
            return default
        return self._check(name, self.table.pop(name), kind)

    def require(self, name: str, kind: type[T]) -> T:
        if name not in self.table:
            raise self.fail(name, "required key is missing")
        return self._check(name, self.table.pop(name), kind)

    def _check(self, name: str, value: Any, kind: type[T]) -> T:
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            try:
                value = float(value)
            except OverflowError:
                raise self.fail(name, "number is too large") from None
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(name, f"expected {_TYPE_NAMES[kind]}, got {_type_name(value)}")
        return value

    def choice(self, name: str, kind: type[E], default: E) -> E:
        """One of an enum's values, spelled as in the file."""
        value = self.get(name, str, default.value)
        names = [m.value for m in kind]
        self.check(name, value in names, f"expected one of {', '.join(names)}, got {value!r}")
        return kind(value)

    def strings(self, name: str) -> tuple[str, ...]:
        if name not in self.table:
            return ()
        value = self.table.pop(name)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(name, f"expected an array of strings, got {_type_name(value)}")
        return tuple(value)

    def string_table(self, name: str) -> dict[str, str]:
        if name not in self.table:
            return {}
        value = self.table.pop(name)
        if not isinstance(value, dict):
            raise self.fail(name, f"expected a table of strings, got {_type_name(value)}")
        for k, v in value.items():
            where = f"{self.path}: {self.key(name)}.{key_part(k)}"
            if not isinstance(v, str):
                raise ConfigError(f"{where}: expected a string, got {_type_name(v)}")
        return dict(value)

    def header_table(self, name: str) -> dict[str, str]:
        """Like string_table, but names and values must be valid in an HTTP header."""
        value = self.string_table(name)
        for k, v in value.items():
            # aiohttp would only refuse these at request time, failing every request.
            where = f"{self.path}: {self.key(name)}.{key_part(k)}"
            if not _HEADER_NAME.fullmatch(k):
                raise ConfigError(f"{where}: not a valid HTTP header name")
            if any(c in v for c in "\r\n\0"):
                raise ConfigError(f"{where}: header value must not contain CR, LF or NUL")
        return dict(value)

    def sub(self, name: str) -> Reader:
        value = self.table.pop(name, {})
        if not isinstance(value, dict):
            raise self.fail(name, f"expected a table, got {_type_name(value)}")
        return Reader(self.path, value, self.key(name))

    def check(self, name: str, ok: bool, problem: str) -> None:
        if not ok:
            raise self.fail(name, problem)

    def done(self) -> None:
        """Reject whatever keys nobody took: a typo must not be silently ignored."""
        for name in self.table:
            raise self.fail(name, "unknown key")
