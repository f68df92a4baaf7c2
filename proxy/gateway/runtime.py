"""What the handlers use for one config: router, pool persistence, open streams.

A SIGHUP reload builds a new Router on the same pool, so accounts that stay keep
their state and streams in flight keep the objects they started with.
"""

from __future__ import annotations

import os
import resource
import stat
from dataclasses import dataclass, field
from pathlib import Path

from proxy.config import Config, ConfigError, load
from proxy.gateway.routing import Router, limits_of, make_pool
from proxy.logs import get_logger, redactor
from proxy.pool.accounts import Strategy
from proxy.state.conversations import (
    Conversations,
    MemoryConversations,
    RedisConversations,
    SQLiteConversations,
)
from proxy.state.redis_link import RedisLink
from proxy.state.redis_store import RedisStore
from proxy.state.shared import SharedPersister, SharedPool
from proxy.state.store import Persister, open_store
from proxy.upstream.oauth import DEFAULT_CLIENT_ID, DEFAULT_TOKEN_URL, OAuthAccount
from proxy.upstream.oauth_share import TokenShare
from proxy.upstream.wire import ConnectionPool, Response

log = get_logger("seamline")

# Files besides the streams' sockets: listeners, logs, the state database, Redis.
SPARE_FILES = 64


def open_file_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def auto_concurrent(files: int) -> int:
    """The requests in flight that ``files`` open files allow: each stream holds two
    sockets (the client's and the upstream's)."""
    return max(1, (files - SPARE_FILES) // 2)


@dataclass
class Runtime:
    router: Router
    persister: Persister
    # Upstream responses being relayed: a drain that runs out of time ends them.
    streams: set[Response] = field(default_factory=set)
    tokens: TokenShare | None = None  # OAuth tokens shared between replicas
    # Stored responses (/v1/responses with store: true), in the state backend.
    conversations: Conversations = field(
        default_factory=lambda: MemoryConversations(86400.0, 1 << 26, 1 << 24)
    )

    @property
    def connections(self) -> ConnectionPool:
        """Every upstream call of /v1 (the router's, kept across reloads)."""
        return self.router.connections

    @property
    def shared(self) -> SharedPool | None:
        return self.router.shared


def build_runtime(config: Config) -> Runtime:
    pool = make_pool(config)
    router = Router(config, pool, oauth_accounts(config))
    state, kept = config.state, config.responses
    if state.backend != "redis":
        conversations: Conversations = (
            MemoryConversations(kept.ttl_s, kept.max_bytes, kept.max_record_bytes)
            if config.state_path == ":memory:"
            else SQLiteConversations(
                config.state_path, kept.ttl_s, kept.max_bytes, kept.max_record_bytes
            )
        )
        persister = Persister(pool, open_store(config.state_path))
        return Runtime(router, persister, conversations=conversations)
    link = RedisLink(state.url, state.timeout_s)
    router.shared = SharedPool(pool, link, state.prefix, state.sync_s)
    tokens = TokenShare(link, state.prefix)
    share_tokens(router.oauth, tokens)
    persister = SharedPersister(pool, RedisStore(link, state.prefix), router.shared)
    stored = RedisConversations(link, state.prefix, kept.ttl_s, kept.max_record_bytes)
    return Runtime(router, persister, tokens=tokens, conversations=stored)


def share_tokens(oauth: dict[str, OAuthAccount], tokens: TokenShare | None) -> None:
    for account in oauth.values():
        account.share = tokens


def oauth_accounts(config: Config) -> dict[str, OAuthAccount]:
    return {
        acc.name: OAuthAccount(
            acc.name,
            acc.credentials,
            token_url=acc.token_url or DEFAULT_TOKEN_URL,
            client_id=acc.client_id or DEFAULT_CLIENT_ID,
            proxy=config.proxy_for(acc, acc.token_url or DEFAULT_TOKEN_URL),
        )
        for acc in config.accounts
        if acc.kind == "qwen-oauth"
    }


def reload(rt: Runtime, path: str) -> bool:
    """Apply a changed config file to new requests; keep the old one when it is invalid."""
    try:
        config = load(path)
        oauth = oauth_accounts(config)
    except ConfigError as exc:
        log.error("config_reload_rejected", error=str(exc))
        return False
    except Exception as exc:  # e.g. an OAuth credentials file that cannot be read
        log.error("config_reload_rejected", error=f"{path}: {exc}")
        return False
    old = rt.router.config
    if (old.server.host, old.server.port) != (config.server.host, config.server.port):
        log.warning("config_reload_partial", detail="host and port change only on restart")
    if old.state != config.state:
        log.warning("config_reload_partial", detail="[state] changes only on restart")
    redactor.set_secrets(config.secrets())
    pool = rt.router.pool
    pool.replace_accounts([limits_of(a) for a in config.accounts])
    pool.strategy = Strategy(config.routing.strategy)
    pool.breaker_threshold = config.routing.breaker_threshold
    pool.breaker_cooldown = config.routing.breaker_cooldown
    share_tokens(oauth, rt.tokens)
    old_router = rt.router
    rt.router = Router(
        config,
        pool,
        oauth,
        shared=old_router.shared,
        connections=old_router.connections,
        token_http=old_router.token_http,
    )
    log.info("config_reloaded", path=path, accounts=[a.name for a in config.accounts])
    warn_readable_secrets(config)
    return True


def warn_readable_secrets(config: Config) -> None:
    """Warn about credentials files (and a config holding keys) that others may read."""
    paths = [Path(a.credentials).expanduser() for a in config.accounts if a.credentials]
    if _holds_a_secret(config):
        paths.append(Path(config.path))
    for path in paths:
        try:
            mode = os.stat(path).st_mode
        except OSError:
            continue
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            log.warning(
                "secrets_file_readable_by_others",
                path=str(path),
                mode=oct(stat.S_IMODE(mode)),
                fix=f"chmod 600 {path}",
            )


def _holds_a_secret(config: Config) -> bool:
    """Whether the config file itself spells out a key (account, client or admin).

    Keys given by ``*_env`` live in the environment, not in the file.
    """
    if config.path in ("", "<config>"):
        return False
    try:
        text = Path(config.path).read_text("utf-8", "replace")
    except OSError:
        return False
    return any(secret in text for secret in config.secrets())
