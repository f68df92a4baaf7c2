"""scripts/demo: through seamline every scenario yields the whole answer or an explicit error."""

from __future__ import annotations

import demo
from broken_upstreams import ANSWER, SCENARIOS


async def test_demo_shows_seamline_fixing_what_breaks_the_sdk() -> None:
    results = {name: (direct, through) for name, _, direct, through in await demo.compare()}
    assert results.keys() == SCENARIOS.keys()
    for name, scenario in SCENARIOS.items():
        if scenario.through is None:
            assert results[name][1].startswith("APIError: upstream stream ended"), name
        else:
            assert results[name][1] == f"ok: {scenario.through!r}", name
    # The demo only makes its point if the SDK alone fails on most of them.
    broken = [n for n, (direct, _) in results.items() if direct != f"ok: {ANSWER!r}"]
    assert len(broken) >= 8
