"""What seamline logged, caught two ways.

``captured_logs`` holds every event as its call site made it (structlog's
``capture_logs``: before the processors, so before redaction): for tests of what is
logged. ``log_output`` holds the JSON lines seamline writes, after every processor: for
tests of what leaves the process, where a secret must already be gone.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
from structlog.testing import capture_logs

from proxy import logs


@pytest.fixture
def captured_logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """Every event logged, as the call sites made it (before redaction)."""
    with capture_logs() as events:
        yield events


def _written() -> Iterator[io.StringIO]:
    out = io.StringIO()
    logs.configure(json_lines=True, stream=out)
    yield out
    logs.configure(json_lines=False, stream=io.StringIO())


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """The JSON lines seamline writes, redacted, as it writes them."""
    yield from _written()


@pytest.fixture
def debug_log_output(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """The JSON lines seamline writes with DEBUG_STREAMING on: the stream traces too."""
    monkeypatch.setenv("DEBUG_STREAMING", "true")
    yield from _written()


def log_lines(out: io.StringIO) -> list[dict[str, Any]]:
    """The lines written so far, each as its JSON object."""
    return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]
