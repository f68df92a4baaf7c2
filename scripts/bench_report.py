"""The bench's report: figures with ratios and targets, and the printed table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench import Sizes


@dataclass
class Figure:
    key: str
    label: str
    unit: str
    values: dict[str, float | None]
    ratios: bool = True
    target: str = ""
    passed: bool | None = None
    caveat: str = ""  # why a pass or fail should not be taken at face value


def _get(results: dict[str, Any], scenario: str, target: str, key: str) -> float | None:
    v = results.get(scenario, {}).get(target, {}).get(key)
    return None if v is None else float(v)


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def figures(results: dict[str, Any], names: list[str], sizes: Sizes) -> list[Figure]:
    """The table's rows, in order; a target is checked against seamline's value."""
    figs: list[Figure] = []

    def per(scenario: str, key: str) -> dict[str, float | None]:
        return {n: _get(results, scenario, n, key) for n in names}

    def added(scenario: str, key: str) -> dict[str, float | None]:
        base = _get(results, scenario, "direct", key)
        return {
            n: None if n == "direct" else _minus(_get(results, scenario, n, key), base)
            for n in names
        }

    def row(
        key: str,
        label: str,
        unit: str,
        values: dict[str, float | None],
        target: str = "",
        ok: Callable[[float], bool] | None = None,
        ratios: bool = True,
    ) -> None:
        fig = Figure(key, label, unit, values, ratios, target)
        v = values.get("seamline")
        if ok is not None and v is not None:
            fig.passed = ok(v)
        figs.append(fig)

    def cpu_row(key: str, label: str, scenario: str, ref: str = "") -> None:
        cpu = per(scenario, "cpu_per_event_us")
        nginx = cpu.get("nginx")
        if nginx is None:
            row(key, label, "µs", cpu, f"{ref}≤ 1.5x nginx")
        else:
            row(
                key,
                label,
                "µs",
                cpu,
                f"{ref}≤ 1.5x nginx = {1.5 * nginx:.1f}",
                lambda v: v <= 1.5 * nginx,
            )
        spent = [_get(results, scenario, n, "window_cpu_s") for n in ("seamline", "nginx")]
        merged = _get(results, scenario, "seamline", "events_per_write") or 1.0
        if any(x is not None and x < 0.1 for x in spent):
            figs[-1].passed = None
            figs[-1].caveat = "under 0.1 s of CPU measured (10 ms ticks): too coarse to judge"
        elif merged > 1.2:
            figs[-1].caveat = (
                f"seamline fell behind and merged {merged:.1f} events per write, which "
                "makes each event cheaper than when it keeps up"
            )

    if "ttfb" in results:
        row("ttfb_p50_us", "time to first byte p50", "µs", per("ttfb", "p50_us"))
        row(
            "ttfb_added_p50_us",
            "  added by the proxy",
            "µs",
            added("ttfb", "p50_us"),
            "≤ 1000",
            lambda v: v <= 1000,
        )
        row("ttfb_p99_us", "time to first byte p99", "µs", per("ttfb", "p99_us"))
    if "latency" in results:
        gap = f"{sizes.lat_interval_ms:g} ms apart"
        row("latency_p50_us", f"event latency p50 ({gap})", "µs", per("latency", "p50_us"))
        row(
            "latency_added_p50_us",
            "  added by the proxy",
            "µs",
            added("latency", "p50_us"),
            "≤ 120",
            lambda v: v <= 120,
        )
        row("latency_p99_us", "event latency p99", "µs", per("latency", "p99_us"))
        row("latency_added_p99_us", "  added by the proxy", "µs", added("latency", "p99_us"))
    for sc, rate, ref in (("load", sizes.load_rate, ""), ("paced", sizes.paced_rate, "(ref) ")):
        if sc not in results:
            continue
        label = f"{sizes.load_streams} streams x {rate:g} ev/s"
        offered = sizes.load_streams * rate
        cpu_row(f"{sc}_cpu_per_event_us", f"CPU per relayed event ({label})", sc, ref)
        row(
            f"{sc}_events_per_write",
            "  events per proxy write (1 = none merged)",
            "",
            per(sc, "events_per_write"),
        )
        row(
            f"{sc}_events_per_s",
            f"  events/s achieved (offered {offered:,.0f})",
            "ev/s",
            per(sc, "events_per_s"),
        )
        row(f"{sc}_latency_p50_us", "  event latency p50", "µs", per(sc, "latency_p50_us"))
        row(f"{sc}_latency_p99_us", "  event latency p99", "µs", per(sc, "latency_p99_us"))
        row(f"{sc}_cpu_util", "  proxy CPU", "cores", per(sc, "cpu_util"))
        if sc == "load":
            row(
                "mem_per_stream_kib",
                f"memory per stream ({label}, peak)",
                "KiB",
                per(sc, "mem_active_per_stream_kib"),
                "≤ 20",
                lambda v: v <= 20,
            )
            row(
                "mem_idle_per_stream_kib",
                f"memory per stream ({sizes.load_streams} open, before any event)",
                "KiB",
                per(sc, "mem_idle_per_stream_kib"),
            )
    if "throughput" in results:
        row(
            "stream_events_per_s",
            "events/s, one stream, upstream flat out",
            "ev/s",
            per("throughput", "events_per_s"),
        )
        row(
            "stream_cpu_per_event_us",
            "  CPU per event",
            "µs",
            per("throughput", "cpu_per_event_us"),
        )
    if "concurrent" in results:
        c = sizes.conc_streams
        row(
            "conc_completed",
            f"{c} concurrent streams: completed",
            "",
            per("concurrent", "completed"),
            f"= {c}",
            lambda v: v == c,
            ratios=False,
        )
        row(
            "conc_lost_events",
            "  events lost",
            "",
            per("concurrent", "lost_events"),
            "= 0",
            lambda v: v == 0,
            ratios=False,
        )
        row(
            "conc_errors",
            "  failed streams",
            "",
            per("concurrent", "errors"),
            "= 0",
            lambda v: v == 0,
            ratios=False,
        )
        row(
            "conc_mem_per_stream_kib",
            f"  memory per stream ({c} open, before any event)",
            "KiB",
            per("concurrent", "mem_idle_per_stream_kib"),
            "≤ 20",
            lambda v: v <= 20,
        )
        offered = c * 1000 / sizes.conc_interval_ms
        row(
            "conc_events_per_s",
            f"  events/s achieved (offered {offered:,.0f})",
            "ev/s",
            per("concurrent", "events_per_s"),
        )
    return figs


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _fmt(v: float | None) -> str:
    if v is None:
        return "—"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100 or v == int(v):
        return f"{v:.0f}"
    return f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"


def _fmtratio(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}x"


def table(figs: list[Figure], names: list[str]) -> str:
    head = ["figure", "unit", *names]
    if "seamline" in names and "direct" in names:
        head.append("seamline/direct")
    if "seamline" in names and "nginx" in names:
        head.append("seamline/nginx")
    head += ["target (seamline)", "pass"]
    rows = [head]
    notes: list[str] = []
    for f in figs:
        row = [f.label, f.unit, *(_fmt(f.values.get(n)) for n in names)]
        s = f.values.get("seamline")
        if "seamline/direct" in head:
            row.append(_fmtratio(ratio(s, f.values.get("direct"))) if f.ratios else "—")
        if "seamline/nginx" in head:
            row.append(_fmtratio(ratio(s, f.values.get("nginx"))) if f.ratios else "—")
        row.append(f.target)
        verdict = "" if f.passed is None else ("PASS" if f.passed else "FAIL")
        if f.caveat:
            verdict += "*"
            notes.append(f"* {f.label.strip()}: {f.caveat}")
        row.append(verdict)
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    out = []
    for k, r in enumerate(rows):
        cells = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out + notes)
