"""TOML configuration -> frozen dataclasses; every error names the file and the key."""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from proxy.upstream.egress import (
    DIRECT,
    EnvProxies,
    ProxyURL,
    Setting,
    from_env,
    parse_proxy,
    route,
)

T = TypeVar("T")


class ConfigError(Exception):
    """A config problem, already worded as one line: ``file: key: problem``."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Upstream timeouts in seconds; 0 means none."""

    connect: float = 10.0
    headers: float = 300.0
    idle: float = 300.0
    total: float = 0.0


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    api_keys: tuple[str, ...] = ()
    max_body_bytes: int = 16 * 1024 * 1024
    max_event_bytes: int = 8 * 1024 * 1024
    admin_key: str | None = None
    heartbeat_s: float = 15.0
    # Requests in flight at once; past it 503. None: as many as the open-file limit
    # allows (each stream holds two sockets); 0: unlimited.
    max_concurrent: int | None = None
    client_rpm: int = 0  # requests per minute per client key; 0 = unlimited
    drain_s: float = 30.0  # on SIGTERM, how long in-flight streams may go on
    drain_grace_s: float = 5.0  # on SIGTERM, /readyz 503 with the listener open, first
    keepalive_s: float = 75.0  # idle time allowed between requests on a connection
    body_timeout_s: float = 60.0  # a request body must arrive whole within this
    body_min_rate: int = 1024  # bytes/s a request body must average past the grace; 0: any
    body_rate_grace_s: float = 5.0  # how long a request body may take before the floor
    metrics_public: bool = False  # /metrics without the admin key
    # Upstream response headers clients get beside Content-Type, Retry-After (on 429/503)
    # and the upstream's request id (as X-Upstream-Request-ID): names or globs.
    forward_response_headers: tuple[str, ...] = ("openai-processing-ms", "content-disposition")


KINDS = ("api_key", "qwen-oauth")
STRATEGIES = ("round_robin", "least_busy", "fill_first", "weighted")


@dataclass(frozen=True, slots=True)
class AccountConfig:
    name: str
    base_url: str  # for qwen-oauth: "" until the credentials say where
    api_key: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    kind: str = "api_key"
    credentials: str = ""
    token_url: str = ""
    device_url: str = ""
    client_id: str = ""
    models: tuple[str, ...] = ()
    priority: int = 0
    weight: int = 1
    max_concurrent: int = 0
    rpm: int = 0
    daily_requests: int = 0
    quota_reset: tuple[int, int, str] = (0, 0, "UTC")
    force_stream: bool = False
    timeouts: Timeouts | None = None  # overrides of the global [timeouts]
    # An HTTP proxy, DIRECT ("direct": none), or None: the environment decides.
    proxy: Setting = None


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    strategy: str = "round_robin"
    max_attempts: int = 0  # 0: every eligible account once
    breaker_threshold: int = 3
    breaker_cooldown: float = 30.0


BACKENDS = ("sqlite", "memory", "redis")
REDIS_SCHEMES = ("redis", "rediss", "unix")


@dataclass(frozen=True, slots=True)
class StateConfig:
    """Where pool state lives: SQLite for one process, Redis for several replicas."""

    backend: str = "sqlite"
    path: str = ":memory:"  # SQLite file; ":memory:" for the memory backend (and Redis)
    url: str = ""  # redis://, rediss:// or unix:// (redis backend only)
    prefix: str = "seamline"  # namespace of every Redis key, so deployments can share one
    timeout_s: float = 0.25  # longest a request waits on Redis before deciding locally
    sync_s: float = 0.5  # how often each replica pulls the shared view


@dataclass(frozen=True, slots=True)
class Config:
    path: str
    server: ServerConfig
    timeouts: Timeouts
    accounts: tuple[AccountConfig, ...]
    routing: RoutingConfig = RoutingConfig()
    aliases: Mapping[str, str] = field(default_factory=dict)
    state: StateConfig = StateConfig()
    env_proxies: EnvProxies = field(default_factory=EnvProxies)  # HTTPS_PROXY and friends

    @property
    def state_path(self) -> str:
        """The SQLite file, or ":memory:" when state is not kept in one."""
        return self.state.path

    def secrets(self) -> list[str]:
        """Every secret value this config holds, for the log redactor."""
        out = [a.api_key for a in self.accounts if a.api_key]
        out.extend(self.server.api_keys)
        if self.server.admin_key:
            out.append(self.server.admin_key)
        if password := urlsplit(self.state.url).password:
            out.append(password)
        env = self.env_proxies
        proxies = [a.proxy for a in self.accounts] + [env.http, env.https]
        for proxy in proxies:
            if isinstance(proxy, ProxyURL):
                out.extend(proxy.secrets())
        return out

    def proxy_for(self, account: AccountConfig, url: str) -> ProxyURL | None:
        """The proxy a call of ``account`` to ``url`` goes through; None: direct."""
        return route(account.proxy, self.env_proxies, url)

    def timeouts_for(self, account: AccountConfig) -> Timeouts:
        return account.timeouts or self.timeouts


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _key_part(name: str) -> str:
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


class _Reader:
    """Takes keys out of one TOML table, wording every error the same way."""

    def __init__(self, path: str, table: Mapping[str, Any], where: str) -> None:
        self.path = path
        self.table = dict(table)
        self.where = where

    def key(self, name: str) -> str:
        part = _key_part(name)
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
            where = f"{self.path}: {self.key(name)}.{_key_part(k)}"
            if not isinstance(v, str):
                raise ConfigError(f"{where}: expected a string, got {_type_name(v)}")
        return dict(value)

    def header_table(self, name: str) -> dict[str, str]:
        """Like string_table, but names and values must be valid in an HTTP header."""
        value = self.string_table(name)
        for k, v in value.items():
            # aiohttp would only refuse these at request time, failing every request.
            where = f"{self.path}: {self.key(name)}.{_key_part(k)}"
            if not _HEADER_NAME.fullmatch(k):
                raise ConfigError(f"{where}: not a valid HTTP header name")
            if any(c in v for c in "\r\n\0"):
                raise ConfigError(f"{where}: header value must not contain CR, LF or NUL")
        return dict(value)

    def sub(self, name: str) -> _Reader:
        value = self.table.pop(name, {})
        if not isinstance(value, dict):
            raise self.fail(name, f"expected a table, got {_type_name(value)}")
        return _Reader(self.path, value, self.key(name))

    def check(self, name: str, ok: bool, problem: str) -> None:
        if not ok:
            raise self.fail(name, problem)

    def done(self) -> None:
        """Reject whatever keys nobody took: a typo must not be silently ignored."""
        for name in self.table:
            raise self.fail(name, "unknown key")


def _positive(r: _Reader, name: str, value: float) -> float:
    r.check(name, math.isfinite(value), "must be a finite number of seconds (0 means none)")
    r.check(name, value >= 0, "must not be negative")
    return value


def _seconds(r: _Reader, name: str, default: float) -> float:
    return _positive(r, name, r.get(name, float, default))


def _timeouts(r: _Reader, base: Timeouts) -> Timeouts:
    num: Callable[[str, float], float] = lambda n, d: _positive(r, n, r.get(n, float, d))  # noqa: E731
    t = Timeouts(
        connect=num("connect", base.connect),
        headers=num("headers", base.headers),
        idle=num("idle", base.idle),
        total=num("total", base.total),
    )
    r.done()
    return t


def _secret(r: _Reader, name: str, env: Mapping[str, str]) -> str | None:
    """``name`` or ``name_env`` (the name of an environment variable holding it)."""
    value = r.get(name, str, "") or None
    var = r.get(f"{name}_env", str, "")
    if var:
        r.check(f"{name}_env", value is None, f"give {name} or {name}_env, not both")
        value = env.get(var)
        r.check(f"{name}_env", bool(value), f"environment variable {var!r} is not set")
    return value


def _server(r: _Reader, env: Mapping[str, str]) -> ServerConfig:
    d = ServerConfig()
    port = r.get("port", int, d.port)
    r.check("port", 0 <= port <= 65535, "must be between 0 and 65535")
    s = ServerConfig(
        host=r.get("host", str, d.host),
        port=port,
        api_keys=r.strings("api_keys"),
        max_body_bytes=r.get("max_body_bytes", int, d.max_body_bytes),
        max_event_bytes=r.get("max_event_bytes", int, d.max_event_bytes),
        admin_key=_secret(r, "admin_key", env),
        heartbeat_s=_positive(r, "heartbeat_s", r.get("heartbeat_s", float, d.heartbeat_s)),
        max_concurrent=_count(r, "max_concurrent", 0) if "max_concurrent" in r.table else None,
        client_rpm=_count(r, "client_rpm", d.client_rpm),
        drain_s=_positive(r, "drain_s", r.get("drain_s", float, d.drain_s)),
        drain_grace_s=_seconds(r, "drain_grace_s", d.drain_grace_s),
        keepalive_s=_seconds(r, "keepalive_s", d.keepalive_s),
        body_timeout_s=_seconds(r, "body_timeout_s", d.body_timeout_s),
        body_min_rate=_count(r, "body_min_rate", d.body_min_rate),
        body_rate_grace_s=_seconds(r, "body_rate_grace_s", d.body_rate_grace_s),
        metrics_public=r.get("metrics_public", bool, d.metrics_public),
        forward_response_headers=_header_globs(
            r, "forward_response_headers", d.forward_response_headers
        ),
    )
    r.check("max_body_bytes", s.max_body_bytes > 0, "must be positive")
    r.check("max_event_bytes", s.max_event_bytes > 0, "must be positive")
    # Without a deadline a body that trickles in would hold its max_concurrent slot
    # for as long as its client likes.
    r.check("body_timeout_s", s.body_timeout_s > 0, "must be positive: a body needs a deadline")
    r.check("keepalive_s", s.keepalive_s > 0, "must be positive")
    r.done()
    return s


_HEADER_GLOB = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z?\[\]-]+")


def _header_globs(r: _Reader, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    if name not in r.table:
        return default
    globs = r.strings(name)
    for glob in globs:
        r.check(name, bool(_HEADER_GLOB.fullmatch(glob)), f"not a header name or glob: {glob!r}")
    return globs


def _base_url(r: _Reader, base_url: str) -> str:
    base_url = base_url.rstrip("/")
    try:
        parts = urlsplit(base_url)
        _ = parts.port  # raises ValueError for a port that is not a number in range
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        ok = False
    # urlsplit silently drops tabs and newlines, which would then reach the upstream URL.
    ok = ok and not any(c.isspace() or not c.isprintable() for c in base_url)
    r.check("base_url", ok, f"expected an http:// or https:// URL, got {base_url!r}")
    return base_url


_RESET = re.compile(r"^(\d{1,2}):(\d{2})(?:\s+(\S+))?$")


def _quota_reset(r: _Reader) -> tuple[int, int, str]:
    text = r.get("quota_reset", str, "00:00 UTC").strip()
    m = _RESET.match(text)
    problem = 'expected "HH:MM" or "HH:MM Area/City", e.g. "00:00 Asia/Shanghai"'
    r.check("quota_reset", m is not None, problem)
    assert m is not None
    hour, minute, zone = int(m[1]), int(m[2]), m[3] or "UTC"
    r.check("quota_reset", hour < 24 and minute < 60, problem)
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise r.fail("quota_reset", f"unknown time zone {zone!r}") from None
    return hour, minute, zone


def _proxy(r: _Reader, env: Mapping[str, str]) -> Setting:
    """``proxy`` (or ``proxy_env``, the name of a variable holding it): an HTTP proxy URL
    or "direct"; absent, the environment's proxies apply."""
    name = "proxy"
    if "proxy_env" in r.table:
        r.check("proxy_env", "proxy" not in r.table, "give proxy or proxy_env, not both")
        name = "proxy_env"
        var = r.get("proxy_env", str, "")
        text = env.get(var, "").strip()
        r.check(name, bool(text), f"environment variable {var!r} is not set")
    elif "proxy" in r.table:
        text = r.get("proxy", str, "").strip()
    else:
        return None
    if text.lower() == DIRECT:
        return DIRECT
    r.check(name, bool(text), 'is empty: give an HTTP proxy URL, or "direct" for none')
    r.check(name, text.lower() not in ("none", "off", "no", "false"), 'say "direct" for none')
    try:
        return parse_proxy(text)
    except ValueError as exc:
        raise r.fail(name, str(exc)) from None


def _count(r: _Reader, name: str, default: int) -> int:
    value = r.get(name, int, default)
    r.check(name, value >= 0, "must not be negative")
    return value


def _account(r: _Reader, env: Mapping[str, str], timeouts: Timeouts) -> AccountConfig:
    name = r.require("name", str)
    r.check("name", bool(name.strip()), "must not be empty")
    kind = r.get("kind", str, "api_key")
    r.check("kind", kind in KINDS, f"expected one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "qwen-oauth":
        credentials = r.get("credentials", str, "~/.qwen/oauth_creds.json")
        r.check("api_key", "api_key" not in r.table, 'not used with kind = "qwen-oauth"')
        r.check("api_key_env", "api_key_env" not in r.table, 'not used with kind = "qwen-oauth"')
        base_url = _base_url(r, r.get("base_url", str, "")) if "base_url" in r.table else ""
        token_url = r.get("token_url", str, "")
        device_url = r.get("device_url", str, "")
        for key, url in (("token_url", token_url), ("device_url", device_url)):
            if url:
                _base_url(_Reader(r.path, {}, r.key(key)), url)
        client_id = r.get("client_id", str, "")
    else:
        credentials = token_url = device_url = client_id = ""
        base_url = _base_url(r, r.require("base_url", str))
    api_key = _secret(r, "api_key", env)
    weight = _count(r, "weight", 1)
    r.check("weight", weight > 0, "must be at least 1")
    sub_timeouts = _timeouts(r.sub("timeouts"), timeouts) if "timeouts" in r.table else None
    acc = AccountConfig(
        name=name,
        base_url=base_url,
        api_key=api_key,
        headers=r.header_table("headers"),
        kind=kind,
        credentials=credentials,
        token_url=token_url,
        device_url=device_url,
        client_id=client_id,
        models=r.strings("models"),
        priority=r.get("priority", int, 0),
        weight=weight,
        max_concurrent=_count(r, "max_concurrent", 0),
        rpm=_count(r, "rpm", 0),
        daily_requests=_count(r, "daily_requests", 0),
        quota_reset=_quota_reset(r),
        force_stream=r.get("force_stream", bool, False),
        timeouts=sub_timeouts,
        proxy=_proxy(r, env),
    )
    r.done()
    return acc


def _routing(r: _Reader) -> RoutingConfig:
    d = RoutingConfig()
    strategy = r.get("strategy", str, d.strategy)
    r.check(
        "strategy",
        strategy in STRATEGIES,
        f"expected one of {', '.join(STRATEGIES)}, got {strategy!r}",
    )
    out = RoutingConfig(
        strategy=strategy,
        max_attempts=_count(r, "max_attempts", d.max_attempts),
        breaker_threshold=_count(r, "breaker_threshold", d.breaker_threshold),
        breaker_cooldown=_positive(
            r, "breaker_cooldown", r.get("breaker_cooldown", float, d.breaker_cooldown)
        ),
    )
    r.check("breaker_threshold", out.breaker_threshold > 0, "must be at least 1")
    r.done()
    return out


def _aliases(r: _Reader) -> dict[str, str]:
    aliases = r.string_table("aliases")
    r.done()
    return aliases


def _state(r: _Reader, config_path: str) -> StateConfig:
    d = StateConfig()
    backend = r.get("backend", str, d.backend)
    r.check(
        "backend", backend in BACKENDS, f"expected one of {', '.join(BACKENDS)}, got {backend!r}"
    )
    if backend != "sqlite":
        r.check("path", "path" not in r.table, 'only used with backend = "sqlite"')
    if backend != "redis":
        for key in ("url", "prefix", "timeout_s", "sync_s"):
            r.check(key, key not in r.table, 'only used with backend = "redis"')
    path = r.get("path", str, "seamline-state.db") if backend == "sqlite" else ":memory:"
    url = r.require("url", str) if backend == "redis" else ""
    if url:
        scheme = urlsplit(url).scheme
        r.check(
            "url",
            scheme in REDIS_SCHEMES and not any(c.isspace() for c in url),
            f"expected a redis://, rediss:// or unix:// URL, got a {scheme or 'schemeless'} URL",
        )
    prefix = r.get("prefix", str, d.prefix)
    r.check("prefix", bool(prefix) and not any(c.isspace() for c in prefix), "must be a word")
    timeout = _positive(r, "timeout_s", r.get("timeout_s", float, d.timeout_s))
    r.check("timeout_s", timeout > 0, "must be positive")
    sync = _positive(r, "sync_s", r.get("sync_s", float, d.sync_s))
    r.check("sync_s", sync > 0, "must be positive")
    r.done()
    if path != ":memory:":
        p = Path(path).expanduser()
        if not p.is_absolute() and config_path not in ("<config>", ""):
            p = Path(config_path).resolve().parent / p
        path = str(p)
    return StateConfig(backend, path, url, prefix, timeout, sync)


def parse(text: str, path: str = "<config>", env: Mapping[str, str] | None = None) -> Config:
    """Parse and validate config text; raises ConfigError with a one-line message."""
    env = os.environ if env is None else env
    try:
        raw = tomllib.loads(text)
    except ValueError as exc:  # TOMLDecodeError, or an integer past Python's digit limit
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    try:
        env_proxies = from_env(env)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    root = _Reader(path, raw, "")
    server = _server(root.sub("server"), env)
    timeouts = _timeouts(root.sub("timeouts"), Timeouts())
    routing = _routing(root.sub("routing"))
    aliases = _aliases(root.sub("models"))
    state = _state(root.sub("state"), path)
    raw_accounts = root.table.pop("accounts", [])
    if not isinstance(raw_accounts, list):
        raise root.fail("accounts", "expected an array of tables ([[accounts]])")
    accounts: list[AccountConfig] = []
    for i, entry in enumerate(raw_accounts):
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: accounts[{i}]: expected a table")
        acc = _account(_Reader(path, entry, f"accounts[{i}]"), env, timeouts)
        if any(a.name == acc.name for a in accounts):
            raise ConfigError(f"{path}: accounts[{i}].name: duplicate account name {acc.name!r}")
        accounts.append(acc)
    if not accounts:
        raise ConfigError(f"{path}: accounts: at least one [[accounts]] entry is required")
    root.done()
    return Config(
        path=path,
        server=server,
        timeouts=timeouts,
        accounts=tuple(accounts),
        routing=routing,
        aliases=aliases,
        state=state,
        env_proxies=env_proxies,
    )


def load(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file."""
    name = str(path)
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{name}: invalid TOML: file is not UTF-8") from None
    return parse(text, name, env)
