"""TOML configuration -> frozen dataclasses; every error names the file and the key."""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .egress import DIRECT, Setting, from_env, parse_proxy
from .model import (
    REDIS_SCHEMES,
    AccountConfig,
    Api,
    Backend,
    Config,
    ConfigError,
    Kind,
    ReasoningSwitch,
    ResponsesConfig,
    RoutingConfig,
    ServerConfig,
    StateConfig,
    Strategy,
    Timeouts,
)
from .reader import Reader

ANTHROPIC_BASE_URL = "https://api.anthropic.com/v1"


def _positive(r: Reader, name: str, value: float) -> float:
    r.check(name, math.isfinite(value), "must be a finite number of seconds (0 means none)")
    r.check(name, value >= 0, "must not be negative")
    return value


def _seconds(r: Reader, name: str, default: float) -> float:
    return _positive(r, name, r.get(name, float, default))


def _timeouts(r: Reader, base: Timeouts) -> Timeouts:
    num: Callable[[str, float], float] = lambda n, d: _positive(r, n, r.get(n, float, d))  # noqa: E731
    t = Timeouts(
        connect=num("connect", base.connect),
        headers=num("headers", base.headers),
        idle=num("idle", base.idle),
        total=num("total", base.total),
    )
    r.done()
    return t


def _secret(r: Reader, name: str, env: Mapping[str, str]) -> str | None:
    """``name`` or ``name_env`` (the name of an environment variable holding it)."""
    value = r.get(name, str, "") or None
    var = r.get(f"{name}_env", str, "")
    if var:
        r.check(f"{name}_env", value is None, f"give {name} or {name}_env, not both")
        value = env.get(var)
        r.check(f"{name}_env", bool(value), f"environment variable {var!r} is not set")
    return value


def _server(r: Reader, env: Mapping[str, str]) -> ServerConfig:
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


def _header_globs(r: Reader, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    if name not in r.table:
        return default
    globs = r.strings(name)
    for glob in globs:
        r.check(name, bool(_HEADER_GLOB.fullmatch(glob)), f"not a header name or glob: {glob!r}")
    return globs


def _base_url(r: Reader, base_url: str) -> str:
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


def _quota_reset(r: Reader) -> tuple[int, int, str]:
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


def _proxy(r: Reader, env: Mapping[str, str]) -> Setting:
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


def _count(r: Reader, name: str, default: int) -> int:
    value = r.get(name, int, default)
    r.check(name, value >= 0, "must not be negative")
    return value


def _account(r: Reader, env: Mapping[str, str], timeouts: Timeouts) -> AccountConfig:
    name = r.require("name", str)
    r.check("name", bool(name.strip()), "must not be empty")
    kind = r.choice("kind", Kind, Kind.API_KEY)
    if kind is Kind.QWEN_OAUTH:
        credentials = r.get("credentials", str, "~/.qwen/oauth_creds.json")
        r.check("api_key", "api_key" not in r.table, 'not used with kind = "qwen-oauth"')
        r.check("api_key_env", "api_key_env" not in r.table, 'not used with kind = "qwen-oauth"')
        base_url = _base_url(r, r.get("base_url", str, "")) if "base_url" in r.table else ""
        token_url = r.get("token_url", str, "")
        device_url = r.get("device_url", str, "")
        for key, url in (("token_url", token_url), ("device_url", device_url)):
            if url:
                _base_url(Reader(r.path, {}, r.key(key)), url)
        client_id = r.get("client_id", str, "")
    elif kind is Kind.ANTHROPIC:
        credentials = token_url = device_url = client_id = ""
        base_url = _base_url(r, r.get("base_url", str, ANTHROPIC_BASE_URL))
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
        api=r.choice("api", Api, Api.MESSAGES if kind is Kind.ANTHROPIC else Api.CHAT),
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
        reasoning_switch=r.choice(
            "reasoning_switch", ReasoningSwitch, ReasoningSwitch.REASONING_EFFORT
        ),
        top_k=r.get("top_k", bool, False),
        timeouts=sub_timeouts,
        proxy=_proxy(r, env),
    )
    r.done()
    return acc


def _routing(r: Reader) -> RoutingConfig:
    d = RoutingConfig()
    strategy = r.choice("strategy", Strategy, d.strategy)
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


def _aliases(r: Reader) -> dict[str, str]:
    aliases = r.string_table("aliases")
    r.done()
    return aliases


def _state(r: Reader, config_path: str) -> StateConfig:
    d = StateConfig()
    backend = r.choice("backend", Backend, d.backend)
    if backend is not Backend.SQLITE:
        r.check("path", "path" not in r.table, 'only used with backend = "sqlite"')
    if backend is not Backend.REDIS:
        for key in ("url", "prefix", "timeout_s", "sync_s"):
            r.check(key, key not in r.table, 'only used with backend = "redis"')
    path = r.get("path", str, "seamline-state.db") if backend is Backend.SQLITE else ":memory:"
    url = r.require("url", str) if backend is Backend.REDIS else ""
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


def _responses(r: Reader) -> ResponsesConfig:
    d = ResponsesConfig()
    out = ResponsesConfig(
        ttl_s=_positive(r, "ttl_s", r.get("ttl_s", float, d.ttl_s)),
        max_bytes=_count(r, "max_bytes", d.max_bytes),
        max_record_bytes=_count(r, "max_record_bytes", d.max_record_bytes),
    )
    r.check("ttl_s", out.ttl_s > 0, "must be positive")
    r.done()
    return out


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
    root = Reader(path, raw, "")
    server = _server(root.sub("server"), env)
    timeouts = _timeouts(root.sub("timeouts"), Timeouts())
    routing = _routing(root.sub("routing"))
    aliases = _aliases(root.sub("models"))
    state = _state(root.sub("state"), path)
    responses = _responses(root.sub("responses"))
    raw_accounts = root.table.pop("accounts", [])
    if not isinstance(raw_accounts, list):
        raise root.fail("accounts", "expected an array of tables ([[accounts]])")
    accounts: list[AccountConfig] = []
    for i, entry in enumerate(raw_accounts):
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: accounts[{i}]: expected a table")
        acc = _account(Reader(path, entry, f"accounts[{i}]"), env, timeouts)
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
        responses=responses,
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
