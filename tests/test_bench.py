"""scripts/bench --quick: runs end to end through seamline, reports every figure, loses nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "scripts" / "bench.py"

# The figures a run over every scenario reports for seamline.
FIGURES = (
    "ttfb_p50_us",
    "ttfb_added_p50_us",
    "latency_p50_us",
    "latency_added_p50_us",
    "latency_added_p99_us",
    "load_cpu_per_event_us",
    "load_events_per_s",
    "mem_per_stream_kib",
    "paced_cpu_per_event_us",
    "stream_events_per_s",
    "conc_completed",
    "conc_lost_events",
    "conc_errors",
)


def test_quick_bench_reports_every_figure_and_loses_no_event(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["--quick", "--targets", "direct,seamline", "--json", str(out), "--silent"]
    proc = subprocess.run(
        [sys.executable, str(BENCH), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["targets"] == ["direct", "seamline"]
    figures = report["figures"]
    for key in FIGURES:
        assert figures[key]["values"]["seamline"] is not None, key
    assert figures["latency_added_p50_us"]["target"] == "≤ 120"
    assert figures["ttfb_added_p50_us"]["pass"] in (True, False)
    streams = report["sizes"]["conc_streams"]
    assert figures["conc_completed"]["values"] == {"direct": streams, "seamline": streams}
    assert report["lost_events"] == {"direct": 0, "seamline": 0}
    assert report["errors"] == {"direct": 0, "seamline": 0}
    assert min(report["streams"].values()) > streams
    assert "seamline/direct" in proc.stdout  # the table was printed
