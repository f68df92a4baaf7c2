"""structlog setup: JSON lines or console, request-scoped fields, and secret redaction.

Redaction is one processor in the pipeline, so no call site can forget it: every
string in every event dict is scrubbed of known secrets (configured keys) and of
anything shaped like a credential (bearer tokens, ``sk-`` keys, token fields).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog

REDACTED = "[REDACTED]"
_SECRET_KEYS = re.compile(r"(authorization|api[_-]?key|token|secret|password|cookie)", re.I)
_PATTERNS = re.compile(
    r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"
    r"|\bsk-[A-Za-z0-9_-]{6,}"
    r'|("(?:access_token|refresh_token|id_token|api_key)"\s*:\s*")[^"]*'
    r"|((?:access_token|refresh_token|api_key)=)[^&\s]+"
)


@functools.lru_cache(maxsize=1024)
def _secret_key(key: str) -> bool:
    """Whether a field named ``key`` holds a secret whatever its value looks like."""
    return bool(_SECRET_KEYS.search(key)) and key not in ("tokens", "prompt_tokens")


def _mask(match: re.Match[str]) -> str:
    prefix = match.group(1) or match.group(2) or match.group(3) or ""
    return prefix + REDACTED


_PLAIN = frozenset({int, float, bool, type(None)})  # nothing in them to redact


class Redactor:
    """structlog processor that removes secrets from every field of every event."""

    def __init__(self) -> None:
        self._secrets: tuple[str, ...] = ()

    def set_secrets(self, secrets: Iterable[str]) -> None:
        # Longest first, so a key that contains another is removed whole.
        self._secrets = tuple(sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True))

    def add_secret(self, secret: str) -> None:
        self.set_secrets((*self._secrets, secret))

    def holds_secret(self, text: str) -> bool:
        """Whether ``text`` holds one of the configured secrets."""
        return any(secret in text for secret in self._secrets)

    def scrub_known(self, body: bytes) -> bytes:
        """Remove the configured secrets (only those) from bytes bound for a client."""
        for secret in self._secrets:
            raw = secret.encode()
            if raw in body:
                body = body.replace(raw, REDACTED.encode())
        return body

    def scrub(self, text: str) -> str:
        # Every alternative of _PATTERNS contains "token", "sk-", "bearer" or "api_key"
        # (case aside): text with none of them cannot match, and most log fields (ids,
        # names) have none. The regex is the costly part of a log line; this test is a
        # few fast substring scans.
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        low = text.casefold()  # not lower(): re.I also folds U+017F to "s", U+212A to "k"
        if "token" in low or "sk-" in low or "bearer" in low or "api_key" in low:
            return _PATTERNS.sub(_mask, text)
        return text

    def _value(self, key: str, value: Any) -> Any:
        if type(value) in _PLAIN:
            return value
        if isinstance(value, str):
            if _secret_key(key):
                return REDACTED if value else value
            return self.scrub(value)
        if isinstance(value, bytes):
            return self.scrub(value.decode("utf-8", "replace"))
        if isinstance(value, dict):
            return {k: self._value(str(k), v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._value(key, v) for v in value]
        if isinstance(value, BaseException):
            return self.scrub(repr(value))
        return value

    def __call__(
        self, logger: Any, method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in list(event_dict.items()):
            event_dict[key] = self._value(key, value)
        return event_dict


redactor = Redactor()
_MASK = REDACTED.encode()


def fingerprint(secret: str) -> str:
    """Tells secrets apart without showing or keeping any: the first 16 hex digits of its
    SHA-256 (``printf %s "$KEY" | sha256sum | cut -c1-16`` finds which key it is). What
    logs, the admin views and the persisted state name a key, a token or a client by."""
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


def mask(data: bytes, secrets: tuple[bytes, ...]) -> bytes:
    """``data`` with each of ``secrets`` masked: an upstream that echoes the key it was
    sent must not hand it to a client. One C-speed scan per secret (usually one)."""
    for secret in secrets:
        if secret in data:
            data = data.replace(secret, _MASK)
    return data


def _scrub_rendered(logger: Any, method: str, rendered: str) -> str:
    # Tracebacks are rendered after the redactor ran; scrub the final text once more.
    return redactor.scrub(rendered)


def debug_streaming_enabled() -> bool:
    return os.environ.get("DEBUG_STREAMING", "").strip().lower() in ("1", "true", "yes", "on")


DEFAULT_TRACE_BYTES = 16 * 1024


def trace_bytes() -> int:
    """How much of each read and write a DEBUG_STREAMING trace shows
    (``DEBUG_STREAMING_BYTES``; a read longer than that is shown cut, with its size)."""
    value = os.environ.get("DEBUG_STREAMING_BYTES", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else DEFAULT_TRACE_BYTES


def shown(data: bytes, limit: int) -> str:
    """Bytes as a trace shows them: UTF-8 text where they are text, escapes elsewhere,
    cut at ``limit`` bytes. Secrets are removed by the redactor like any field."""
    text = data[:limit].decode("utf-8", "backslashreplace")
    return text if len(data) <= limit else f"{text}... ({len(data) - limit} more bytes)"


def configure(
    level: str = "INFO", json_lines: bool | None = None, stream: TextIO | None = None
) -> None:
    """Install the logging pipeline; JSON lines unless the output is a terminal."""
    out = sys.stderr if stream is None else stream
    if json_lines is None:
        json_lines = not out.isatty()
    lvl = logging.DEBUG if debug_streaming_enabled() else getattr(logging, level.upper())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_lines
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redactor,
        renderer,
        _scrub_rendered,
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
