"""The suite's fixtures, registered for every test module (they live in ``support``),
and the event loops each test runs on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

# ``hypothesis`` is imported up front: its pytest plugin otherwise imports its settings
# at the session's end, and on CPython 3.11 compiling them there, after the Agents SDK
# ran, fails with "AST constructor recursion depth mismatch" (a run of only the tests
# that use neither).
import hypothesis  # noqa: F401
import pytest
import uvloop

from support.http_proxies import scripted_proxy, tinyproxy
from support.logs import captured_logs, debug_log_output, log_output
from support.redis_replicas import redis_server, replicas
from support.seamline import proxied, seamline
from support.tls import tls_files
from support.upstream import make_upstream, raw_upstream, upstream
from support.wire_client import wire_client

__all__ = [
    "captured_logs",
    "debug_log_output",
    "log_output",
    "make_upstream",
    "proxied",
    "raw_upstream",
    "redis_server",
    "replicas",
    "scripted_proxy",
    "seamline",
    "tinyproxy",
    "tls_files",
    "upstream",
    "wire_client",
]

_PROXY_VARIABLES = (
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "no_proxy",
    "NO_PROXY",
)


@pytest.fixture(autouse=True)
def _no_proxy_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite's upstreams are on loopback: the proxy settings of whoever runs it must
    not route them (nor the processes tests start, nor the openai client) through a
    proxy. Tests that want proxies set them."""
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


# Modules whose tests also run on uvloop, the loop seamline serves on: their code
# works the transports directly, and uvloop's differ from asyncio's.
_BOTH_LOOPS = frozenset({"test_wire.py", "test_wire_hostile.py", "test_proxies.py"})


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    if item.path.name in _BOTH_LOOPS:
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}
