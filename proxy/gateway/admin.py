"""The operator's hands on a running seamline: reset, disable and enable an account, the
requests in flight, usage. Behind ``server.admin_key``; nothing here shows a secret.

An action is the pool's own (``Pool.reset``, ``operator_disable``, ``enable``): with
Redis the pool's listener shares it with every replica as it does any change.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from typing import Any

from proxy.errors import InvalidJSON, NotFound
from proxy.gateway.admin_page import page
from proxy.gateway.ops import json_reply, require_admin
from proxy.gateway.reply import Reply
from proxy.gateway.request import Request
from proxy.logs import get_logger, redactor
from proxy.pool.accounts import AccountState, Pool

log = get_logger("seamline.admin")

MAX_BODY = 4096
MAX_REASON = 200
DEFAULT_REASON = "no reason given"
OPERATOR = "by an operator: "  # how an operator's disable reads, next to an upstream's
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


async def admin_page(request: Request) -> Reply:
    """``GET /admin``: the page. It holds no data, so it needs no key (it asks for one);
    off, like the other admin endpoints, while no admin key is set."""
    if not request.app.runtime.router.config.server.admin_key:
        raise NotFound("the admin endpoints are off: set server.admin_key to enable them")
    found = page()
    return Reply(200, found.body, dict(found.headers))


async def account_action(request: Request) -> Reply:
    """``POST /admin/accounts/{name}/reset|disable|enable``: the account's row after it.

    ``disable`` takes ``{"reason": "..."}`` (optional). Each action is logged once, with
    the admin key's fingerprint as who did it."""
    by = require_admin(request)
    # rpartition: an account's name may hold a "/" (sent as %2F).
    name, _, action = request.path.removeprefix("/admin/accounts/").rpartition("/")
    pool = request.app.runtime.router.pool
    act = _ACTIONS.get(action)
    if act is None:
        raise NotFound(f"unknown admin action {action[:40]!r}: reset, disable or enable")
    st = pool.states.get(name)
    if st is None:
        raise NotFound(f"no account named {name[:100]!r}")
    reason = await _reason(request) if action == "disable" else None
    was = pool.block(st, time.time())
    act(pool, st, reason)
    log.info(
        "admin_action",
        action=action,
        account=name,
        by=by,
        was=None if was is None else was[0].value,
        reason=reason,
        request_id=request.outcome.request_id,
    )
    rows = pool.snapshot(time.time())
    return json_reply({"account": next(r for r in rows if r["name"] == name)})


def _reset(pool: Pool, st: AccountState, reason: str | None) -> None:
    pool.reset(st, time.time())


def _disable(pool: Pool, st: AccountState, reason: str | None) -> None:
    pool.operator_disable(st, OPERATOR + (reason or DEFAULT_REASON))


def _enable(pool: Pool, st: AccountState, reason: str | None) -> None:
    pool.enable(st, time.time())


_ACTIONS = {"reset": _reset, "disable": _disable, "enable": _enable}


async def _reason(request: Request) -> str:
    """The disable's reason from its JSON body: one line, bounded, and scrubbed of
    anything shaped like a secret (it is logged, persisted and shown)."""
    raw = await request.read(MAX_BODY)
    if not raw.strip():
        return DEFAULT_REASON
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidJSON('the body must be JSON: {"reason": "..."}') from None
    given = body.get("reason") if isinstance(body, dict) else None
    if given is not None and not isinstance(given, str):
        raise InvalidJSON('"reason" must be a string')
    text = _CONTROL.sub(" ", given or "").strip()[:MAX_REASON]
    return redactor.scrub(text) or DEFAULT_REASON


async def admin_streams(request: Request) -> Reply:
    """``GET /admin/streams``: the upstream answers being relayed, oldest first. Ids,
    names, counts and fingerprints only: never a body, a header or a key."""
    require_admin(request)
    wall, mono = time.time(), time.monotonic()
    outcomes = sorted(request.app.runtime.streams.values(), key=lambda o: o.started)
    rows: list[dict[str, Any]] = [
        {
            "request_id": o.request_id,
            "route": o.route,
            "model": o.model,
            "account": o.account,
            "client": o.client,
            "stream": o.stream,
            "started": _iso(wall - (mono - o.started)),
            "age_s": round(mono - o.started, 3),
            "events": o.events_so_far,
            "bytes": o.bytes_out,
        }
        for o in outcomes
    ]
    return json_reply({"streams": rows, "now": wall}, indent=2)


async def admin_usage(request: Request) -> Reply:
    """``GET /admin/usage``: requests and tokens per account and per client key
    fingerprint, today (UTC) and since this replica started."""
    require_admin(request)
    app = request.app
    names = list(app.runtime.router.pool.states)
    return json_reply(app.usage.view(names, time.time()), indent=2)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")
