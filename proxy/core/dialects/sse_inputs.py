"""Reframed upstream events as what a translator is fed: parsed JSON objects, the end
marker, or an upstream error.

The repairs the chat shaper makes on the way to a chat client are made here too, in
the same words (``proxy.core.shaper``): glued events split, keep-alives and stray lines
dropped, error events, bare error lines and ``{"error": ...}`` payloads recognised
however the upstream framed them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from proxy.core.dialects.responses_common import JSON, UpstreamFailure
from proxy.core.openai import DONE, bare_error
from proxy.core.shaper import PING_EVENTS, unglue
from proxy.core.sse import Event, Item, Stray


@dataclass(frozen=True, slots=True)
class Done:
    """The upstream's ``[DONE]``."""


DONE_MARK = Done()
Input = JSON | Done | UpstreamFailure


def _payload(data: bytes, out: list[Input]) -> None:
    stripped = data.strip()
    if not stripped:
        return
    if stripped.startswith(DONE):
        out.append(DONE_MARK)
        return
    try:
        obj = json.loads(stripped)
    except (ValueError, RecursionError):
        return  # not JSON: no chunk, nothing a translator could use
    if not isinstance(obj, dict):
        return
    if obj.get("error"):
        out.append(UpstreamFailure.from_payload(stripped))
    else:
        out.append(obj)


def inputs(items: Iterable[Item]) -> list[Input]:
    """What ``items`` (from :class:`proxy.core.sse.Reframer`) hold, in order."""
    out: list[Input] = []
    for item in items:
        if isinstance(item, Stray):
            err = bare_error(item.line)
            if err is not None:
                out.append(UpstreamFailure.from_payload(err))
            continue
        if not isinstance(item, Event) or item.data is None:
            continue  # comments, id/retry-only blocks
        if item.event in PING_EVENTS:
            continue
        if item.event == b"error":
            out.append(UpstreamFailure.from_payload(item.data))
            continue
        parts = unglue(item.data) if b"\n" in item.data else None
        for part in parts if parts is not None else [item.data]:
            _payload(part, out)
    return out
