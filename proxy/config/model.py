"""The configuration as frozen dataclasses and enums (``load``/``parse`` make them)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import urlsplit

from .egress import EnvProxies, ProxyURL, Setting, route


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


class Kind(StrEnum):
    """How an account authenticates."""

    API_KEY = "api_key"
    QWEN_OAUTH = "qwen-oauth"
    ANTHROPIC = "anthropic"  # Anthropic's API: the key as x-api-key, anthropic-version set


class Api(StrEnum):
    """Which API an account's upstream speaks for conversations: chat completions,
    OpenAI's Responses API or Anthropic's Messages API (each front's requests are
    translated to it)."""

    CHAT = "chat"
    RESPONSES = "responses"
    MESSAGES = "messages"  # Anthropic's Messages API (kind = "anthropic" says it)


class ReasoningSwitch(StrEnum):
    """How a chat upstream is asked to think (a Messages request's ``thinking``): the
    field it reads."""

    REASONING_EFFORT = "reasoning_effort"  # OpenAI's, DeepSeek's, OpenRouter's
    ENABLE_THINKING = "enable_thinking"  # DashScope/Qwen (and its thinking_budget)
    CHAT_TEMPLATE_KWARGS = "chat_template_kwargs"  # vLLM/SGLang: enable_thinking in it


class Strategy(StrEnum):
    """How requests are spread over the accounts of a priority tier."""

    ROUND_ROBIN = "round_robin"
    LEAST_BUSY = "least_busy"
    FILL_FIRST = "fill_first"
    WEIGHTED = "weighted"


@dataclass(frozen=True, slots=True)
class AccountConfig:
    name: str
    base_url: str  # for qwen-oauth: "" until the credentials say where
    api_key: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    kind: Kind = Kind.API_KEY
    api: Api = Api.CHAT
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
    reasoning_switch: ReasoningSwitch = ReasoningSwitch.REASONING_EFFORT
    top_k: bool = False  # the upstream takes top_k (Anthropic clients send it)
    timeouts: Timeouts | None = None  # overrides of the global [timeouts]
    # An HTTP proxy, DIRECT ("direct": none), or None: the environment decides.
    proxy: Setting = None


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    strategy: Strategy = Strategy.ROUND_ROBIN
    max_attempts: int = 0  # 0: every eligible account once
    breaker_threshold: int = 3
    breaker_cooldown: float = 30.0


class Backend(StrEnum):
    """Where pool state lives."""

    SQLITE = "sqlite"
    MEMORY = "memory"
    REDIS = "redis"


REDIS_SCHEMES = ("redis", "rediss", "unix")


@dataclass(frozen=True, slots=True)
class ResponsesConfig:
    """Stored responses (``store: true`` on /v1/responses), in the state backend."""

    ttl_s: float = 30 * 86400.0  # how long a stored response is kept (OpenAI: 30 days)
    max_bytes: int = 256 * 1024 * 1024  # all stored responses (SQLite, memory); oldest go
    max_record_bytes: int = 16 * 1024 * 1024  # one conversation; a larger one is not kept


@dataclass(frozen=True, slots=True)
class StateConfig:
    """Where pool state lives: SQLite for one process, Redis for several replicas."""

    backend: Backend = Backend.SQLITE
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
    responses: ResponsesConfig = ResponsesConfig()
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
