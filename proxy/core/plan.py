"""What goes upstream: the client's body, with only the fields seamline must add. Pure.

The client's bytes go upstream as they came unless a model alias applies, the usage
chunk must be asked for (so that every stream can be accounted), or an account with
``force_stream`` needs a streaming body for a non-streaming client. New fields are
spliced in, so a long conversation is never serialized again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from proxy.core.shaper import JSON_SPACE
from proxy.errors import InvalidJSON, MissingModel


@dataclass(frozen=True, slots=True)
class ClientRequest:
    """What seamline needs to know about the client's request body."""

    body: bytes
    model: str | None = None
    stream: bool = False
    obj: dict[str, Any] | None = None


def inspect_body(body: bytes, needs_model: bool) -> ClientRequest:
    """Parse the body enough to route it; a route that ``needs_model`` must carry a JSON
    ``model``."""
    try:
        obj = json.loads(body) if body else None
    except (ValueError, RecursionError) as exc:
        # RecursionError: nesting deeper than the parser's stack, as invalid as bad syntax.
        if needs_model:
            raise InvalidJSON(f"request body is not valid JSON: {exc}") from None
        return ClientRequest(body)
    if not isinstance(obj, dict):
        if needs_model:
            raise InvalidJSON("request body must be a JSON object")
        return ClientRequest(body)
    model = obj.get("model")
    if needs_model and (not isinstance(model, str) or not model):
        raise MissingModel("you must provide a model parameter")
    return ClientRequest(
        body, model if isinstance(model, str) else None, obj.get("stream") is True, obj
    )


@dataclass(frozen=True, slots=True)
class Bodies:
    """The request bodies an account may get.

    ``send`` asks for the usage chunk when seamline added that; ``plain`` is the same
    without it, for an account that refuses ``stream_options`` (None: nothing was
    added). ``forced`` and ``forced_plain`` are the same for ``force_stream`` accounts
    (made only when some account has it). ``fingerprint`` tells requests apart for the
    breaker (a client retrying one prompt is one request).
    """

    send: bytes
    plain: bytes | None = None
    forced: bytes | None = None
    forced_plain: bytes | None = None
    fingerprint: int = 0

    def body(self, force_stream: bool, plain: bool) -> tuple[bytes, bool]:
        """The body for an account, and whether a plain one could still follow it."""
        if force_stream and self.forced is not None:
            if plain and self.forced_plain is not None:
                return self.forced_plain, False
            return self.forced, self.forced_plain is not None
        if plain and self.plain is not None:
            return self.plain, False
        return self.send, self.plain is not None


@dataclass(frozen=True, slots=True)
class Wants:
    """What the client's answer must look like, once the request has gone upstream."""

    stream: bool
    strip_usage: bool
    client_usage: bool


@dataclass(frozen=True, slots=True)
class Plan:
    """How this request goes upstream and what the client must get back."""

    bodies: Bodies
    strip_usage: bool  # seamline asked for the usage chunk; the client did not
    client_usage: bool  # the client asked for the usage chunk

    def wants(self, stream: bool) -> Wants:
        return Wants(stream, self.strip_usage, self.client_usage)


def plan_request(
    req: ClientRequest, completion: bool, upstream_model: str | None, force_stream: bool = True
) -> Plan:
    """The bodies to send upstream.

    The client's bytes go upstream untouched unless a model alias applies, the usage
    chunk has to be asked for (so that every stream can be accounted), or an account
    with ``force_stream`` needs a streaming body for a non-streaming client (made only
    when ``force_stream``: some account has it).
    """
    obj = req.obj
    fingerprint = hash(req.body)
    if obj is None or not completion:
        return Plan(Bodies(req.body, fingerprint=fingerprint), False, False)
    base: dict[str, Any] = {}
    if upstream_model is not None and upstream_model != req.model:
        base["model"] = upstream_model
    options = obj.get("stream_options")
    options = options if isinstance(options, dict) else {}
    client_usage = req.stream and options.get("include_usage") is True
    with_usage = {"stream_options": {**options, "include_usage": True}}
    if req.stream:
        if client_usage:
            bodies = Bodies(_rewrite(req.body, obj, base), fingerprint=fingerprint)
        else:
            send = _rewrite(req.body, obj, {**base, **with_usage})
            bodies = Bodies(send, _rewrite(req.body, obj, base), fingerprint=fingerprint)
        return Plan(bodies, not client_usage, client_usage)
    forced = forced_plain = None
    if force_stream:
        forced = _rewrite(req.body, obj, {**base, "stream": True, **with_usage})
        forced_plain = _rewrite(req.body, obj, {**base, "stream": True})
    bodies = Bodies(_rewrite(req.body, obj, base), None, forced, forced_plain, fingerprint)
    return Plan(bodies, False, False)


def _rewrite(body: bytes, obj: dict[str, Any], changes: dict[str, Any]) -> bytes:
    """``body`` (whose parse is ``obj``) with ``changes`` to its top-level fields.

    New fields are spliced in after the opening brace, so the client's own bytes go on
    as they were (and a long conversation is not serialized again); only replacing a
    field the client sent, or a body that is not plain UTF-8, takes a re-serialization.
    """
    if not changes:
        return body
    stripped = body.lstrip(JSON_SPACE)
    if stripped.startswith(b"{") and not any(k in obj for k in changes):
        at = len(body) - len(stripped) + 1
        fields = json.dumps(changes, ensure_ascii=False, separators=(",", ":")).encode()[1:-1]
        rest = body[at:]
        comma = b"" if rest.lstrip(JSON_SPACE).startswith(b"}") else b","
        return body[:at] + fields + comma + rest
    return json.dumps({**obj, **changes}, ensure_ascii=False, separators=(",", ":")).encode()
