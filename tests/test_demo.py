"""scripts/demo: through seamline every scenario yields the whole answer or an explicit error."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

DEMO = Path(__file__).resolve().parent.parent / "scripts" / "demo.py"


def _demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("seamline_demo", DEMO)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_demo_shows_seamline_fixing_what_breaks_the_sdk() -> None:
    demo = _demo()
    results = {name: (direct, through) for name, _, direct, through in await demo.compare()}
    full = "ok: 'The quick brown fox jumps.'"
    for name in (
        "bom",
        "glued",
        "ping",
        "keepalive",
        "retry",
        "id-comment",
        "json-body",
        "no-done",
    ):
        assert results[name][1] == full, name
    assert results["bad-utf8"][1] == "ok: 'The quick brown f\ufffdx jumps.'"
    assert results["truncated"][1].startswith("APIError: upstream stream ended")
    # The demo only makes its point if the SDK alone fails on most of them.
    broken = [n for n, (direct, _) in results.items() if direct != full]
    assert len(broken) >= 8
