"""Benchmark seamline against a direct connection and nginx, side by side.

Starts the fake upstream (scripts/fake_upstream.py), seamline, and nginx when it is
installed (a plain reverse proxy with ``proxy_buffering off``: the reference floor),
each as its own process, then measures, interleaving the targets:

- time to first byte, and what a proxy adds to it;
- per-event latency with events 1 ms apart (send time inside the event, receive time
  here; both CLOCK_MONOTONIC, which every process on the machine shares);
- events per second on one stream with the upstream writing as fast as it can;
- CPU per relayed event (the proxy's own utime+stime from /proc, over the steady middle
  of the streams' life) and resident-set growth per stream, with 2,000 streams at
  50 events/s each ("load"), and again at 5 events/s ("paced"), a rate at which no
  proxy falls behind and merges events into one write;
- 8,000 concurrent streams: all complete, no event lost, no error.

Prints a table (each figure, its ratio to the direct connection and to nginx, the
target and whether seamline meets it) and with ``--json PATH`` writes the report.
Exits 1 when any stream lost an event or failed: the figures are then meaningless.

    scripts/bench                        # everything, a few minutes
    scripts/bench --quick                # tiny counts, seconds (the smoke test)
    scripts/bench --targets direct,seamline --scenarios latency,ttfb --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench_client import Client, one_stream, open_held, release
from bench_procs import (
    Target,
    cpu_seconds,
    machine_busy,
    nginx_path,
    own_cpu,
    self_cpu,
    start_nginx,
    start_seamline,
    start_upstream,
    stop,
)
from bench_report import Figure, figures, ratio, table

from proxy.cli.main import raise_open_file_limit  # the same raise seamline makes at start

ALL_TARGETS = ("direct", "seamline", "nginx")
ALL_SCENARIOS = ("ttfb", "latency", "throughput", "load", "paced", "concurrent")


# ---------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Sizes:
    """How much of everything one run does."""

    ttfb_rounds: int = 6
    ttfb_per_round: int = 50
    lat_rounds: int = 4
    lat_events: int = 500  # per round and target, 1 ms apart
    lat_interval_ms: float = 1.0
    tput_rounds: int = 3
    tput_events: int = 100_000
    load_streams: int = 2000
    load_rate: float = 50.0  # events/s per stream
    load_seconds: float = 10.0
    paced_rate: float = 5.0  # the same streams, slow enough that no proxy falls behind
    paced_seconds: float = 8.0
    conc_streams: int = 8000
    conc_events: int = 20
    conc_interval_ms: float = 250.0
    window: int = 100  # streams opening at once (the proxies' listen backlog is 128)
    warmup: int = 20
    settle_s: float = 0.3  # pause before and after opening many streams


FULL = Sizes()
QUICK = Sizes(
    ttfb_rounds=2,
    ttfb_per_round=10,
    lat_rounds=2,
    lat_events=50,
    tput_rounds=1,
    tput_events=2000,
    load_streams=50,
    load_seconds=1.0,
    paced_seconds=1.0,
    conc_streams=200,
    conc_events=5,
    conc_interval_ms=50.0,
    warmup=5,
    settle_s=0.05,
)


# ---------------------------------------------------------------------- statistics


def pct(values: list[int] | list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return float(s[min(len(s) - 1, int(q * len(s)))])


def median(values: list[float]) -> float | None:
    return pct(values, 0.5)


@dataclass
class Tally:
    """Streams run against one target, over every scenario."""

    streams: int = 0
    lost: int = 0
    errors: int = 0
    samples: list[str] = field(default_factory=list)

    def add(self, clients: Iterable[Client]) -> None:
        for c in clients:
            self.streams += 1
            self.lost += c.lost
            if c.error is not None:
                self.errors += 1
                if len(self.samples) < 5:
                    self.samples.append(c.error)


# ----------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Sample:
    """Counters at one moment of a many-stream scenario."""

    at: float
    cpu: float  # the proxy's
    up_cpu: float
    me_cpu: float  # the bench's own (the load client)
    busy: float  # the whole machine's
    events: int
    chunks: int
    rss: int

    def __sub__(self, o: Sample) -> Sample:
        return Sample(
            self.at - o.at,
            self.cpu - o.cpu,
            self.up_cpu - o.up_cpu,
            self.me_cpu - o.me_cpu,
            self.busy - o.busy,
            self.events - o.events,
            self.chunks - o.chunks,
            self.rss - o.rss,
        )

    @property
    def other(self) -> float:
        """Busy CPU charged to none of proxy, upstream and client: other processes, and
        kernel work (loopback network softirqs) that lands on no process."""
        return self.busy - self.cpu - self.up_cpu - self.me_cpu


class Bench:
    """The scenarios, run against every target; results and tallies by target name."""

    def __init__(
        self,
        sizes: Sizes,
        targets: list[Target],
        upstream_port: int,
        upstream_pid: int,
        say: Callable[[str], None],
    ) -> None:
        self.sizes = sizes
        self.targets = targets
        self.upstream_port = upstream_port
        self.upstream_pid = upstream_pid
        self.say = say
        self.tally = {t.name: Tally() for t in targets}
        self.results: dict[str, dict[str, Any]] = {}
        self._turn = 0

    def _put(self, scenario: str, target: str, **values: Any) -> None:
        self.results.setdefault(scenario, {}).setdefault(target, {}).update(values)

    def _check(self, t: Target, clients: Iterable[Client]) -> None:
        self.tally[t.name].add(clients)

    async def warmup(self) -> None:
        for t in self.targets:
            cs = [await one_stream(t.port, {"n": 3}) for _ in range(self.sizes.warmup)]
            self._check(t, cs)

    async def ttfb(self) -> None:
        s = self.sizes
        samples: dict[str, list[int]] = {t.name: [] for t in self.targets}
        for _ in range(s.ttfb_rounds):
            for t in self.targets:
                for _ in range(s.ttfb_per_round):
                    c = await one_stream(t.port, {"n": 1})
                    self._check(t, [c])
                    if c.error is None:
                        samples[t.name].append(c.t_first - c.t_sent)
        for name, v in samples.items():
            self._put("ttfb", name, n=len(v), p50_us=_us(pct(v, 0.5)), p99_us=_us(pct(v, 0.99)))

    async def latency(self) -> None:
        s = self.sizes
        samples: dict[str, list[int]] = {t.name: [] for t in self.targets}
        bench = {"n": s.lat_events + 1, "interval_ms": s.lat_interval_ms}
        for _ in range(s.lat_rounds):
            for t in self.targets:
                c = await one_stream(t.port, bench, record=samples[t.name])
                self._check(t, [c])
        for name, v in samples.items():
            self._put(
                "latency",
                name,
                n=len(v),
                interval_ms=s.lat_interval_ms,
                p50_us=_us(pct(v, 0.5)),
                p99_us=_us(pct(v, 0.99)),
                max_us=_us(max(v) if v else None),
            )

    async def throughput(self) -> None:
        s = self.sizes
        rates: dict[str, list[float]] = {t.name: [] for t in self.targets}
        cpu: dict[str, list[float]] = {t.name: [] for t in self.targets}
        for _ in range(s.tput_rounds):
            for t in self.targets:
                c0 = t.cpu()
                c = await one_stream(t.port, {"n": s.tput_events}, count_only=True)
                used = t.cpu() - c0
                self._check(t, [c])
                span = (c.t_last_event - c.t_first_event) / 1e9
                if c.error is None and span > 0:
                    rates[t.name].append((c.events - 1) / span)
                    if t.proc is not None:
                        cpu[t.name].append(used / c.events * 1e6)
        for name in rates:
            self._put(
                "throughput",
                name,
                events=s.tput_events,
                rounds=rates[name],
                events_per_s=median(rates[name]),
                cpu_per_event_us=median(cpu[name]) if cpu[name] else None,
            )

    def _sample(self, t: Target, clients: list[Client]) -> Sample:
        return Sample(
            time.monotonic(),
            t.cpu(),
            self.upstream_cpu(),
            self_cpu(),
            machine_busy(),
            sum(c.events for c in clients),
            sum(c.chunks for c in clients),
            t.rss(),
        )

    async def _held(self, scenario: str, t: Target, streams: int, n: int, interval: float) -> None:
        """Open ``streams`` held streams, measure, release them all, wait, measure.

        CPU per event, events per write and utilisations come from the steady middle of
        the streams' life (20% to 80% of their scheduled time): opening and ending a
        stream has its own cost, which the time to first byte covers instead.
        """
        s = self.sizes
        group = f"{scenario}-{t.name}-{uuid.uuid4().hex[:8]}"
        bench = {"n": n + 1, "interval_ms": interval, "hold": group}
        await asyncio.sleep(s.settle_s)  # let the restarted process settle
        rss0 = t.rss()
        self.say(f"  {scenario}/{t.name}: opening {streams} streams")
        t0 = time.monotonic()
        clients = await open_held(t.port, streams, bench, s.window)
        open_s = time.monotonic() - t0
        opened = sum(1 for c in clients if c.error is None)
        await asyncio.sleep(s.settle_s)
        rss_open = t.rss()
        record = clients[0].record if clients else None
        if record is not None:
            record.clear()  # only the events after the release
        first = self._sample(t, clients)
        released = await release(self.upstream_port, group)
        t_rel = time.monotonic_ns()
        self.say(f"  {scenario}/{t.name}: {opened} open in {open_s:.1f} s; released {released}")
        samples = [first]
        pending = [c.done for c in clients if not c.done.done()]
        duration = n * interval / 1000
        deadline = time.monotonic() + duration * 6 + 60
        while pending and time.monotonic() < deadline:
            _, still = await asyncio.wait(pending, timeout=0.2)
            pending = list(still)
            samples.append(self._sample(t, clients))
        for c in clients:
            if not c.done.done():
                c._fail("timed out")
        last = samples[-1]
        self._check(t, clients)
        lo = first.at + 0.2 * duration
        hi = first.at + 0.8 * duration
        inside = [x for x in samples if lo <= x.at <= hi]
        a, b = (inside[0], inside[-1]) if len(inside) >= 2 else (first, last)
        whole, win = last - first, b - a
        relayed = sum(max(0, c.events - 1) for c in clients)
        t_last = max((c.t_last_event for c in clients), default=t_rel)
        span = max(1e-9, (t_last - t_rel) / 1e9)
        peak = max(x.rss for x in samples)
        lat = record or []
        proxied = t.proc is not None
        self._put(
            scenario,
            t.name,
            streams=streams,
            opened=opened,
            completed=sum(1 for c in clients if c.complete and c.error is None),
            lost_events=sum(c.lost for c in clients),
            errors=sum(1 for c in clients if c.error is not None),
            events_expected=streams * n,
            events_relayed=relayed,
            offered_events_per_s=streams * 1000 / interval,
            events_per_s=relayed / span,
            seconds=whole.at,
            open_seconds=open_s,
            window_seconds=win.at,
            window_events=win.events,
            window_cpu_s=win.cpu if proxied else None,
            events_per_write=win.events / win.chunks if win.chunks else None,
            cpu_per_event_us=win.cpu / win.events * 1e6 if proxied and win.events else None,
            cpu_util=win.cpu / win.at if proxied and win.at else None,
            upstream_cpu_util=win.up_cpu / win.at if win.at else None,
            client_cpu_util=win.me_cpu / win.at if win.at else None,
            other_cpu_util=max(0.0, win.other / win.at) if win.at else None,
            cpu_s_whole=whole.cpu if proxied else None,
            cpu_per_event_us_whole=whole.cpu / relayed * 1e6 if proxied and relayed else None,
            rss_base_kib=rss0 / 1024 if proxied else None,
            rss_open_kib=rss_open / 1024 if proxied else None,
            rss_peak_kib=peak / 1024 if proxied else None,
            mem_idle_per_stream_kib=(rss_open - rss0) / 1024 / streams if proxied else None,
            mem_active_per_stream_kib=(peak - rss0) / 1024 / streams if proxied else None,
            latency_p50_us=_us(pct(lat, 0.5)),
            latency_p99_us=_us(pct(lat, 0.99)),
        )
        del clients
        await asyncio.sleep(s.settle_s)

    def upstream_cpu(self) -> float:
        return cpu_seconds([self.upstream_pid])

    def _rotated(self) -> list[Target]:
        """The targets, starting one further on each time: drift hits each alike."""
        k = self._turn % len(self.targets)
        self._turn += 1
        return self.targets[k:] + self.targets[:k]

    async def load(self) -> None:
        s = self.sizes
        n = round(s.load_rate * s.load_seconds)
        for t in self._rotated():
            await t.restart()
            await self._warm(t)
            await self._held("load", t, s.load_streams, n, 1000 / s.load_rate)

    async def paced(self) -> None:
        s = self.sizes
        n = round(s.paced_rate * s.paced_seconds)
        for t in self._rotated():
            await t.restart()
            await self._warm(t)
            await self._held("paced", t, s.load_streams, n, 1000 / s.paced_rate)

    async def concurrent(self) -> None:
        s = self.sizes
        for t in self._rotated():
            await t.restart()
            await self._warm(t)
            await self._held("concurrent", t, s.conc_streams, s.conc_events, s.conc_interval_ms)

    async def _warm(self, t: Target) -> None:
        cs = [await one_stream(t.port, {"n": 3}) for _ in range(self.sizes.warmup)]
        self._check(t, cs)


def _us(ns: float | int | None) -> float | None:
    return None if ns is None else ns / 1000


# ---------------------------------------------------------------------------- main


def _sizes(args: argparse.Namespace) -> Sizes:
    sizes = QUICK if args.quick else FULL
    overrides = {
        k: v
        for k, v in (("load_streams", args.load_streams), ("conc_streams", args.concurrent))
        if v is not None
    }
    return Sizes(**{**asdict(sizes), **overrides}) if overrides else sizes


def _choice(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    chosen = [x.strip() for x in text.split(",") if x.strip()]
    for name in chosen:
        if name not in allowed:
            raise SystemExit(f"bench: unknown {what} {name!r} (choose from {', '.join(allowed)})")
    return chosen


async def _start_targets(names: list[str], tmp: Path, up_port: int) -> list[Target]:
    targets: list[Target] = []
    for name in names:
        t = Target(name)
        if name == "direct":
            t.port = up_port
        elif name == "seamline":
            t.start = lambda t=t: start_seamline(t, tmp, up_port)
        else:
            t.start = lambda t=t: start_nginx(t, tmp, up_port)
        targets.append(t)  # before starting: stopped on the way out even if it fails
        if t.start is not None:
            await t.start()
    return targets


def _notes(bench: Bench, other_cores: float) -> list[str]:
    """What a reader of the figures must know: failures, contention, falling behind."""
    notes: list[str] = []
    for name, tally in bench.tally.items():
        if tally.errors:
            notes.append(f"{name}: {tally.errors} stream(s) failed, e.g. {tally.samples[:2]}")
    if other_cores > 0.1:
        notes.append(
            f"{other_cores:.2f} of the machine's {os.cpu_count()} cores went, on average, to "
            "work not charged to the bench's processes (other processes, kernel network "
            "work): the figures are that much noisier"
        )
    for sc in ("load", "paced", "concurrent"):
        for name, r in bench.results.get(sc, {}).items():
            offered, got = r.get("offered_events_per_s"), r.get("events_per_s")
            if offered and got and got < 0.95 * offered:
                harness = (r["upstream_cpu_util"] or 0) + (r["client_cpu_util"] or 0)
                notes.append(
                    f"{sc}/{name}: {got:,.0f} of the offered {offered:,.0f} events/s; proxy "
                    f"{r['cpu_util'] or 0:.2f} cores, upstream+client {harness:.2f}, "
                    f"uncharged (other processes, kernel) {r['other_cpu_util'] or 0:.2f}"
                )
            per_write = r.get("events_per_write") or 1.0
            if name != "direct" and per_write > 1.2:
                notes.append(
                    f"{sc}/{name}: {per_write:.1f} events per write: behind the upstream, the "
                    "proxy read several events at once, which makes its CPU per event lower "
                    "than when it keeps up"
                )
    return notes


def _figure_json(f: Figure) -> dict[str, Any]:
    seamline = f.values.get("seamline")
    return {
        "label": f.label.strip(),
        "unit": f.unit,
        "values": f.values,
        "ratio_to_direct": ratio(seamline, f.values.get("direct")) if f.ratios else None,
        "ratio_to_nginx": ratio(seamline, f.values.get("nginx")) if f.ratios else None,
        "target": f.target or None,
        "pass": f.passed,
        "caveat": f.caveat or None,
    }


async def run(args: argparse.Namespace) -> tuple[dict[str, Any], list[Figure]]:
    """Run the bench; the JSON report and the table's figures."""
    sizes = _sizes(args)
    wanted = _choice(args.targets, ALL_TARGETS, "target")
    scenarios = _choice(args.scenarios, ALL_SCENARIOS, "scenario")
    say: Callable[[str], None] = (
        (lambda m: None) if args.silent else (lambda m: print(m, file=sys.stderr, flush=True))
    )
    notes: list[str] = []
    if "nginx" in wanted and nginx_path() is None:
        wanted.remove("nginx")
        notes.append(
            "nginx is not installed: the nginx column is skipped "
            "(apt-get install nginx to get the reference floor)"
        )
        say(f"note: {notes[-1]}")
    nofile = raise_open_file_limit()
    need = 2 * max(sizes.conc_streams, sizes.load_streams) + 100
    if nofile < need:
        notes.append(f"open-file limit {nofile} is below the {need} the largest scenario needs")
    tmp = Path(tempfile.mkdtemp(prefix="seamline-bench-"))
    busy0, own0, wall0 = machine_busy(), own_cpu(), time.monotonic()
    up_proc, up_port = await start_upstream(tmp)
    targets: list[Target] = []
    try:
        targets = await _start_targets(wanted, tmp, up_port)
        where = ", ".join(
            f"{t.name} :{t.port}" + (f" (pid {t.proc.pid})" if t.proc else "") for t in targets
        )
        say(f"bench: upstream :{up_port}, {where}; logs in {tmp}")
        bench = Bench(sizes, targets, up_port, up_proc.pid, say)
        await bench.warmup()
        for sc in ALL_SCENARIOS:
            if sc in scenarios:
                say(f"bench: {sc}")
                await getattr(bench, sc)()
    finally:
        for t in targets:
            t.stop()
        stop(up_proc)
    wall = time.monotonic() - wall0
    other_cores = max(0.0, (machine_busy() - busy0) - (own_cpu() - own0)) / wall
    names = [t.name for t in targets]
    figs = figures(bench.results, names, sizes)
    notes += _notes(bench, other_cores)
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    tally = bench.tally
    report = {
        "version": 1,
        "quick": args.quick,
        "targets": names,
        "scenarios_run": scenarios,
        "seconds": round(wall, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "open_file_limit": nofile,
            "other_processes_cores": round(other_cores, 3),
        },
        "sizes": asdict(sizes),
        "figures": {f.key: _figure_json(f) for f in figs},
        "results": bench.results,
        "streams": {n: tally[n].streams for n in names},
        "lost_events": {n: tally[n].lost for n in names},
        "errors": {n: tally[n].errors for n in names},
        "error_samples": {n: tally[n].samples for n in names},
        "notes": notes,
        "logs": str(tmp) if args.keep else None,
    }
    return report, figs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny counts: a smoke run in seconds")
    p.add_argument(
        "--targets",
        default=",".join(ALL_TARGETS),
        help="comma-separated: direct,seamline,nginx (default: all)",
    )
    p.add_argument(
        "--scenarios",
        default=",".join(ALL_SCENARIOS),
        help=f"comma-separated subset of {','.join(ALL_SCENARIOS)}",
    )
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    p.add_argument("--load-streams", type=int, help="streams in the load scenario")
    p.add_argument("--concurrent", type=int, help="streams in the concurrency scenario")
    p.add_argument("--keep", action="store_true", help="keep the temp dir with configs and logs")
    p.add_argument("--silent", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        report, figs = asyncio.run(run(args))
    else:
        report, figs = uvloop.run(run(args))
    print()
    print(table(figs, report["targets"]))
    print()
    print(
        f"streams run: {report['streams']}; events lost: {report['lost_events']}; "
        f"failed streams: {report['errors']}; {report['seconds']} s"
    )
    for n in report["notes"]:
        print(f"note: {n}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    # Lost events or failed streams make the run's figures meaningless.
    return 1 if any(report["lost_events"].values()) or any(report["errors"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
