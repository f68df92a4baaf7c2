"""Messages conversation -> chat messages: system, blocks, tool uses and tool results.

The request translator (``anthropic_request``) owns the top-level fields; this module
owns what a conversation holds. Blocks with no chat meaning (thinking signatures,
server tool results, citations, cache markers unless asked for) are left out and named
in ``dropped``, never refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from proxy.core.dialects.anthropic_errors import invalid

# Claude Code's first system block: per-request billing metadata for Anthropic, not an
# instruction. Its ``cch=`` field changes on every request, so passing it on would
# make every upstream's prompt cache miss right at the first token.
BILLING_HEADER = "x-anthropic-billing-header:"
# Text blocks of one message become one chat string, joined by this: Anthropic reads
# consecutive blocks as one text, and a line end keeps their words apart.
JOIN = "\n"
TOOL_ERROR = "Error: "


@dataclass(slots=True)
class Context:
    """What converting one conversation needs: the tool name map, and what it drops."""

    tool_name: Callable[[str], str]
    system_role: str = "system"
    replay_reasoning: bool = False
    cache_control: bool = False
    dropped: set[str] = field(default_factory=set)


def _text_of(block: dict[str, Any]) -> str:
    text = block.get("text")
    return text if isinstance(text, str) else ""


def _part(text: str, block: dict[str, Any], ctx: Context) -> dict[str, Any]:
    part: dict[str, Any] = {"type": "text", "text": text}
    if ctx.cache_control and isinstance(block.get("cache_control"), dict):
        part["cache_control"] = block["cache_control"]
    return part


def _content(parts: list[dict[str, Any]], ctx: Context) -> str | list[dict[str, Any]]:
    """Text-only content as one string (what every chat upstream takes), unless cache
    markers must survive, which only the list form can carry."""
    if all(p["type"] == "text" for p in parts) and not any("cache_control" in p for p in parts):
        return JOIN.join(p["text"] for p in parts)
    return parts


def system_content(system: Any, ctx: Context) -> str | list[dict[str, Any]] | None:
    """The top-level ``system`` (a string or text blocks) as one system message's content."""
    if system is None:
        return None
    if isinstance(system, str):
        return system or None
    if not isinstance(system, list):
        raise invalid("system: Input should be a valid string or a list of text blocks")
    parts = []
    for block in system:
        if not isinstance(block, dict) or block.get("type") != "text":
            ctx.dropped.add("non-text system block")
            continue
        text = _text_of(block)
        if text.startswith(BILLING_HEADER):
            ctx.dropped.add("billing header system block")
            continue
        if text:
            parts.append(_part(text, block, ctx))
    return _content(parts, ctx) if parts else None


def _image(block: dict[str, Any], ctx: Context) -> dict[str, Any] | None:
    source = block.get("source")
    source = source if isinstance(source, dict) else {}
    kind = source.get("type")
    if kind == "base64" and isinstance(source.get("data"), str):
        media = source.get("media_type") or "image/png"
        url = f"data:{media};base64,{source['data']}"
    elif kind == "url" and isinstance(source.get("url"), str):
        url = source["url"]
    else:
        ctx.dropped.add(f"image of source {kind}")
        return None
    return {"type": "image_url", "image_url": {"url": url}}


def _document(block: dict[str, Any], ctx: Context) -> dict[str, Any] | None:
    source = block.get("source")
    source = source if isinstance(source, dict) else {}
    kind = source.get("type")
    if kind == "text" and isinstance(source.get("data"), str):
        return _part(source["data"], block, ctx)
    if kind == "content" and isinstance(source.get("content"), list | str):
        text = _tool_text(source["content"], [], ctx)
        return _part(text, block, ctx)
    if kind == "base64" and isinstance(source.get("data"), str):
        media = source.get("media_type") or "application/pdf"
        name = block.get("title") if isinstance(block.get("title"), str) else "document.pdf"
        data = f"data:{media};base64,{source['data']}"
        return {"type": "file", "file": {"filename": name, "file_data": data}}
    ctx.dropped.add(f"document of source {kind}")
    return None


def _tool_text(content: Any, images: list[dict[str, Any]], ctx: Context) -> str:
    """A tool result's text; its images go to ``images`` (chat tool messages hold text)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid("tool_result.content: Input should be a valid string or list of blocks")
    texts = []
    for block in content:
        if isinstance(block, str):
            texts.append(block)
        elif not isinstance(block, dict):
            continue
        elif block.get("type") == "image":
            image = _image(block, ctx)
            if image is not None:
                images.append(image)
        elif block.get("type") == "document":
            part = _document(block, ctx)
            if part is not None and part["type"] == "text":
                texts.append(part["text"])
        elif isinstance(block.get("text"), str):  # text, search_result and the like
            texts.append(block["text"])
        else:
            ctx.dropped.add(f"{block.get('type')} block in a tool result")
    return JOIN.join(texts)


def _tool_result(block: dict[str, Any], images: list[dict[str, Any]], ctx: Context) -> Any:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise invalid("tool_result.tool_use_id: Field required")
    text = _tool_text(block.get("content"), images, ctx)
    if block.get("is_error") is True:
        # Chat has no error flag on tool messages: the model learns it from the words.
        text = TOOL_ERROR + text if text else TOOL_ERROR.rstrip(": ")
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def _user(content: list[Any], out: list[dict[str, Any]], ctx: Context) -> None:
    # Chat wants tool messages right after the assistant message that called the tools,
    # and Anthropic wants tool results first in their user message: so the tool
    # messages come first, then one user message with everything else in order.
    tools: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in content:
        if isinstance(block, str):
            parts.append({"type": "text", "text": block})
            continue
        if not isinstance(block, dict):
            raise invalid("messages.content: each block should be an object")
        kind = block.get("type")
        part: dict[str, Any] | None = None
        if kind == "tool_result":
            tools.append(_tool_result(block, images, ctx))
        elif kind == "text":
            if _text_of(block):
                part = _part(_text_of(block), block, ctx)
        elif kind == "image":
            part = _image(block, ctx)
        elif kind == "document":
            part = _document(block, ctx)
        else:
            ctx.dropped.add(f"{kind} block")
        if part is not None:
            parts.append(part)
    out.extend(tools)
    if images or parts:
        out.append({"role": "user", "content": _content(images + parts, ctx)})


def _arguments(value: Any) -> str:
    return json.dumps(value if value is not None else {}, ensure_ascii=False)


def _assistant(content: list[Any], out: list[dict[str, Any]], ctx: Context) -> None:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    thoughts: list[str] = []
    for block in content:
        if isinstance(block, str):
            texts.append(block)
            continue
        if not isinstance(block, dict):
            raise invalid("messages.content: each block should be an object")
        kind = block.get("type")
        if kind == "text":
            texts.append(_text_of(block))
        elif kind == "tool_use":
            name = block.get("name")
            if not isinstance(name, str) or not isinstance(block.get("id"), str):
                raise invalid("tool_use: id and name are required")
            function = {"name": ctx.tool_name(name), "arguments": _arguments(block.get("input"))}
            calls.append({"id": block["id"], "type": "function", "function": function})
        elif kind == "thinking" and ctx.replay_reasoning and isinstance(block.get("thinking"), str):
            thoughts.append(block["thinking"])
        else:
            # thinking (its signature means nothing to a chat upstream), redacted
            # thinking, server tool calls and their results: Anthropic's own business.
            ctx.dropped.add(f"{kind} block")
    text = JOIN.join(t for t in texts if t)
    if not text and not calls and not thoughts:
        return
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    if thoughts:
        message["reasoning_content"] = JOIN.join(thoughts)
    out.append(message)


def chat_messages(messages: Any, ctx: Context) -> list[dict[str, Any]]:
    """The conversation as chat messages, in order."""
    if not isinstance(messages, list):
        raise invalid("messages: Input should be a valid list")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise invalid(f"messages.{i}: Input should be a valid object")
        role, content = message.get("role"), message.get("content")
        if isinstance(content, dict):
            content = [content]  # one block, sent without its list
        if not isinstance(content, str | list):
            raise invalid(f"messages.{i}.content: Input should be a valid string or list")
        if role == "system":
            # Claude Code puts reminders here mid-conversation. Kept where they are (not
            # hoisted into the leading system message) so the prompt prefix, and every
            # upstream's cache of it, stays the same from one turn to the next.
            text = system_content(content, ctx) if content else None
            if text:
                out.append({"role": ctx.system_role, "content": text})
        elif role == "user":
            if isinstance(content, str):
                out.append({"role": "user", "content": content})
            else:
                _user(content, out, ctx)
        elif role == "assistant":
            if isinstance(content, str):
                if content:
                    out.append({"role": "assistant", "content": content})
            else:
                _assistant(content, out, ctx)
        else:
            raise invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
    return out
