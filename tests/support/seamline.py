"""seamline itself, started in process on a free port by the real runner."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from proxy import config as cfg
from proxy.gateway.app import Runner, start
from support.builders import config_text
from support.upstream import Upstream


async def start_seamline(text: str, env: dict[str, str] | None = None) -> tuple[Runner, str]:
    """Start seamline with this config text; its runner and its /v1 base URL."""
    runner = await start(cfg.parse(text, "test.toml", env or {}), "127.0.0.1", 0)
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}/v1"


StartSeamline = Callable[..., Awaitable[str]]


@pytest.fixture
async def seamline() -> AsyncIterator[StartSeamline]:
    """Start seamline (the real runner) on a free port; returns its /v1 base URL. Each
    is cleaned up after the test."""
    runners: list[Runner] = []

    async def _start(text: str, env: dict[str, str] | None = None) -> str:
        runner, base = await start_seamline(text, env)
        runners.append(runner)
        return base

    yield _start
    for r in runners:
        await r.cleanup()


@pytest.fixture
async def proxied(upstream: Upstream, seamline: StartSeamline) -> str:
    """seamline in front of the scripted upstream, one account."""
    return await seamline(config_text(("acc1", upstream.url)))
