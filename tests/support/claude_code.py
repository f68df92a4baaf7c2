"""What Claude Code (2.1.x) really sends: the request the Anthropic dialect's tests read."""

from __future__ import annotations

from typing import Any

LONG_MCP = "mcp__github__create_pull_request_review_comment_with_a_suggested_change_block"

# The shape of a Claude Code request (2.1.x): a billing header block that changes on
# every request, cached system blocks, reminders as text blocks and as system-role
# messages, thinking with signatures in the history, MCP tools with long names, a
# server tool, adaptive thinking with an effort, and fields chat has no use for.
CLAUDE_CODE: dict[str, Any] = {
    "model": "claude-sonnet-4-5-20250929",
    "max_tokens": 32000,
    "temperature": 1,
    "stream": True,
    "system": [
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.37; cch=fa690;"},
        {
            "type": "text",
            "text": "You are Claude Code, Anthropic's official CLI for Claude.",
            "cache_control": {"type": "ephemeral"},
        },
        {"type": "text", "text": "Be concise.", "cache_control": {"type": "ephemeral"}},
    ],
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "<system-reminder>todo list empty</system-reminder>"},
                {"type": "text", "text": "fix the bug", "cache_control": {"type": "ephemeral"}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Look first.", "signature": "EqQBCgIYAh"},
                {"type": "text", "text": "I'll read it."},
                {
                    "type": "tool_use",
                    "id": "toolu_01",
                    "name": "Read",
                    "input": {"file_path": "/a.py"},
                },
                {"type": "tool_use", "id": "toolu_02", "name": LONG_MCP, "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01", "content": "1\tprint()"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_02",
                    "is_error": True,
                    "content": [
                        {"type": "text", "text": "<tool_use_error>denied</tool_use_error>"}
                    ],
                },
                {"type": "text", "text": "<system-reminder>file changed</system-reminder>"},
            ],
        },
        {"role": "system", "content": "<total_tokens>5000000 tokens left</total_tokens>"},
    ],
    "tools": [
        {
            "name": "Read",
            "description": "Reads a file",
            "input_schema": {
                "$schema": "http://json-schema.org/draft-07/schema#",
                "type": "object",
                "properties": {"file_path": {"type": "string"}},
                "required": ["file_path"],
                "additionalProperties": False,
            },
        },
        {"name": LONG_MCP, "description": "MCP", "input_schema": {"type": "object"}},
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
    ],
    "metadata": {"user_id": "user_abc_account_def_session_ghi"},
    "thinking": {"type": "adaptive"},
    "output_config": {"effort": "medium"},
    "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
}
