"""Waiting for what happens elsewhere (another task, another process), with a deadline."""

from __future__ import annotations

import asyncio
import time
from typing import Any


async def wait_for(check: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)
