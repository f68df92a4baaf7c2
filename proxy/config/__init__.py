"""The configuration: TOML in, frozen dataclasses out; every error names file and key.

A leaf of the house: it imports nothing else of seamline.
"""

from .load import load, parse
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

__all__ = [
    "REDIS_SCHEMES",
    "AccountConfig",
    "Api",
    "Backend",
    "Config",
    "ConfigError",
    "Kind",
    "ReasoningSwitch",
    "ResponsesConfig",
    "RoutingConfig",
    "ServerConfig",
    "StateConfig",
    "Strategy",
    "Timeouts",
    "load",
    "parse",
]
