"""What the chat and Messages APIs call by different names: stop reasons, usage, tool names."""

from __future__ import annotations

import hashlib
from typing import Any

# Chat finish_reason -> Messages stop_reason. A "stop" that matched one of the request's
# stop sequences becomes "stop_sequence" where the upstream says which (see the stream).
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
    # Upstreams that already speak Anthropic's words, or half of them.
    "end_turn": "end_turn",
    "max_tokens": "max_tokens",
    "tool_use": "tool_use",
    "stop_sequence": "stop_sequence",
    "refusal": "refusal",
}
# Chat finish reasons that say the answer did not end but broke: an error, not a stop.
# DeepSeek's "insufficient_system_resource" cuts the answer for lack of capacity;
# OpenRouter's "error" is a provider failure mid-answer.
BROKEN_REASONS = {"insufficient_system_resource": "overloaded_error", "error": "api_error"}

# Messages stop_reason -> chat finish_reason.
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# OpenAI's limit on function names; Anthropic allows longer ones (MCP tools in Claude
# Code easily pass 64), which chat upstreams refuse.
MAX_CHAT_TOOL_NAME = 64
_HASH = 8


def stop_reason(finish_reason: str) -> str:
    """The Messages stop_reason of a chat finish_reason (``end_turn`` when unknown)."""
    return STOP_REASONS.get(finish_reason, "end_turn")


def finish_reason(stop: Any) -> str:
    """The chat finish_reason of a Messages stop_reason (``stop`` when unknown)."""
    return FINISH_REASONS.get(stop, "stop") if isinstance(stop, str) else "stop"


def chat_tool_name(name: str, limit: int = MAX_CHAT_TOOL_NAME) -> str:
    """A tool name a chat upstream accepts: the name itself when short enough, else its
    head and a hash of the whole (deterministic, so every request of a conversation
    names the tool the same way, and two long names sharing a head stay apart)."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:_HASH]
    return f"{name[: limit - _HASH - 1]}_{digest}"


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _cached(usage: dict[str, Any]) -> tuple[int, int]:
    """Tokens read from and written to a prompt cache, in the spellings upstreams use:
    OpenAI's ``prompt_tokens_details``, DeepSeek's ``prompt_cache_hit_tokens``,
    Anthropic's own names (OpenRouter, LiteLLM)."""
    details = usage.get("prompt_tokens_details")
    details = details if isinstance(details, dict) else {}
    read = (
        _int(details.get("cached_tokens"))
        or _int(usage.get("prompt_cache_hit_tokens"))
        or _int(usage.get("cache_read_input_tokens"))
    )
    written = _int(details.get("cache_write_tokens")) or _int(
        usage.get("cache_creation_input_tokens")
    )
    return read, written


def anthropic_usage(usage: Any) -> dict[str, int]:
    """A chat ``usage`` object as Messages usage: input tokens net of the cached ones."""
    if not isinstance(usage, dict):
        usage = {}
    prompt = _int(usage.get("prompt_tokens")) or _int(usage.get("input_tokens"))
    output = _int(usage.get("completion_tokens")) or _int(usage.get("output_tokens"))
    read, written = _cached(usage)
    return {
        "input_tokens": max(prompt - read - written, 0),
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": read,
        "output_tokens": output,
    }


def chat_usage(usage: Any) -> dict[str, Any]:
    """Messages usage as a chat ``usage`` object: the prompt counts every input token,
    cached or not, as OpenAI's does."""
    if not isinstance(usage, dict):
        usage = {}
    read = _int(usage.get("cache_read_input_tokens"))
    prompt = _int(usage.get("input_tokens")) + read + _int(usage.get("cache_creation_input_tokens"))
    output = _int(usage.get("output_tokens"))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": output,
        "total_tokens": prompt + output,
        "prompt_tokens_details": {"cached_tokens": read},
    }
