"""``agg-bench``: how fast a real agg acknowledges events, after commit.

For each path (HTTP one event per request, HTTP batches, native ZeroMQ
batches) it starts a real ``agg run`` on a fresh temporary data directory,
drives it from separate load processes at full speed, then again at half of
the speed it found (for latency at half of peak load), and prints one table:
events/s acknowledged, p50/p99 latency of an acknowledgement, the rate of the
first and the last 100k events, the time agg takes to be ready again after
every process of it is killed, the CPU each process spent per event, and the
peak RSS of every agg process. It also measures the disk's fsync latency and
the seed demo (5,000 events, 20% duplicates) end to end, because those explain
most differences between machines.

Beside agg it runs the floor: ``bare-single`` is the one-event load against a
bare Falcon-on-uvicorn app that decodes the event and answers without storing
(``agg.tools.bench.bare``). It then measures a lone publisher's view (the
latency of one request at a time, and the seed's own sequential publisher,
on agg and on the bare app), and overload (``--overload-s`` seconds of
open-loop load at ``--overload-factor`` times the capacity just measured, over
HTTP and natively). The report prints the ratios that matter, each from this
one run: agg against the bare app, native against HTTP. The machine's speed
varies from day to day; ratios and CPU per event compare, raw rates do not.

Workload: ``--events`` events (``--single-events`` for the one-per-request
path, which is slower by nature), ``--duplicates`` of them resends of earlier
events, ids random UUID4s (``--ids random``) or time-ordered
(``--ids ordered``), over ``--topics`` topics, all derived from ``--seed``.
Every load loop is bounded by its event count and ``--time-limit``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import urllib.request
from typing import Any, Dict, List, Optional, Sequence

from ...client import HttpPublisher
from .. import console
from ..publish import make_events
from .load import drive
from .report import ratios, render, summarize
from .overload import overload
from .sequential import ack_latency, seed_publisher
from .system import BareSystem, System, cpu_seconds, fsync_latency, peak_rss

PATHS = ("http-single", "bare-single", "http-batch", "zmq-batch")


def seed_demo(base: str, settings: List[str], agg_path: str) -> float:
    """Seconds from the first request to the last acknowledgement of the seed demo."""
    system = System(base, settings, agg_path)
    try:
        events = make_events(5000, 0.2, 42)
        publisher = HttpPublisher(system.endpoints["http"], batch_size=500, max_inflight=4, max_retries=10,
                                  max_backoff=1.0)
        summary = publisher.publish(events, time_limit=60)
        if summary.acknowledged != 5000 or summary.stored != 4000:
            raise RuntimeError(f"seed demo went wrong: {summary.to_json()}")
        return summary.elapsed
    finally:
        system.stop()


def bench_path(path: str, args: argparse.Namespace, settings: List[str]) -> Dict[str, Any]:
    base = tempfile.mkdtemp(prefix="agg-bench-", dir=args.dir)
    single = path.endswith("-single")
    system: Any = BareSystem(base) if path == "bare-single" else System(base, settings, args.agg_path)
    try:
        spec = {
            "path": path, "events": args.single_events if single else args.events,
            "duplicates": args.duplicates, "ids": args.ids, "topics": args.topics, "seed": args.seed,
            "loaders": args.loaders, "batch": args.batch_size, "time_limit": args.time_limit,
            "concurrency": args.single_concurrency if single else args.concurrency,
            "rate": 0.0,
            "endpoint": system.endpoints["ingest" if path == "zmq-batch" else "http"],
        }
        cpu_before = cpu_seconds(system.pids())
        full = summarize(drive(spec))
        cpu_after = cpu_seconds(system.pids())
        # CPU per acknowledged event: steadier than events/s on a shared machine,
        # and it shows which process a change made cheaper.
        cpu_us = {name: round((cpu_after[name] - cpu_before[name]) / max(full["events"], 1) * 1e6, 1)
                  for name in cpu_after if name in cpu_before and name != "supervisor"}
        # Half of peak: new events (another seed), paced at half the rate just found, for
        # up to 20 s. Half of --events at most: 500 batches at the defaults, so that the
        # p99 is the 5th-worst batch (with a fifth, 200 batches, it was the 2nd-worst,
        # and one stall or none decided it).
        half_spec = dict(spec, seed=args.seed + 1, rate=full["events_per_s"] / 2,
                         events=max(1000, min(spec["events"] // 2, int(full["events_per_s"] * 10))))
        half = summarize(drive(half_spec))
        rss = peak_rss(system.pids())
        if path == "bare-single":  # nothing stored: no restart to time
            return {"path": path, "full": full,
                    "half_load": {k: half[k] for k in ("events_per_s", "p50_ms", "p99_ms") if k in half},
                    "cpu_us_per_event": cpu_us, "restart_after_kill_s": None, "peak_rss_mib": rss}
        # Ready again after a crash: nothing may need a rebuild that grows with the data.
        system.crash()
        started = time.monotonic()
        system = System(base, settings, args.agg_path)
        restart = time.monotonic() - started
        return {"path": path, "full": full,
                "half_load": {k: half[k] for k in ("events_per_s", "p50_ms", "p99_ms") if k in half},
                "cpu_us_per_event": cpu_us, "restart_after_kill_s": round(restart, 2),
                "peak_rss_mib": rss}
    finally:
        system.stop()
        shutil.rmtree(base, ignore_errors=True)


def lone_publisher(args: argparse.Namespace, settings: List[str]) -> Dict[str, Any]:
    """One request at a time: agg's latency, and the seed's publisher on agg and on the bare app."""
    out: Dict[str, Any] = {}
    events = make_events(args.seed_events, 0.2, 42)
    for name in ("agg", "bare"):
        base = tempfile.mkdtemp(prefix="agg-bench-", dir=args.dir)
        system: Any = BareSystem(base) if name == "bare" else System(base, settings, args.agg_path)
        try:
            url = system.endpoints["http"]
            if args.ack_requests:
                out[f"ack_{name}"] = ack_latency(url, args.ack_requests, args.seed + 7, args.time_limit)
            if args.seed_events:
                out[f"seed_publisher_{name}_s"] = round(seed_publisher(url, events, args.time_limit), 3)
        finally:
            system.stop()
            shutil.rmtree(base, ignore_errors=True)
    return out


def bench_overload(transport: str, args: argparse.Namespace, settings: List[str]) -> Dict[str, Any]:
    """Capacity of a fresh agg (closed loop, batches), then open-loop load at a multiple of it."""
    base = tempfile.mkdtemp(prefix="agg-bench-", dir=args.dir)
    system = System(base, settings, args.agg_path)
    try:
        endpoint = system.endpoints["ingest" if transport == "zmq" else "http"]
        spec = {"path": "zmq-batch" if transport == "zmq" else "http-batch",
                "events": min(args.events, 300_000), "duplicates": 0.0, "ids": args.ids,
                "topics": args.topics, "seed": args.seed + 11, "loaders": args.loaders,
                "batch": args.batch_size, "time_limit": args.time_limit,
                "concurrency": args.concurrency, "rate": 0.0, "endpoint": endpoint}
        capacity = summarize(drive(spec))["events_per_s"]
        result = overload(transport, endpoint, capacity, args.overload_factor, args.overload_s,
                          args.batch_size, max(2, args.loaders))
        # /stats may trail the last acknowledgements by a publish interval: wait for it to settle.
        unique, deadline = -1, time.monotonic() + 10
        while time.monotonic() < deadline:
            with urllib.request.urlopen(system.endpoints["http"] + "/stats", timeout=10) as resp:
                now = json.load(resp)["unique_processed"] - spec["events"]
            if now == unique and now >= result["acked_stored"]:
                break
            unique = now
            time.sleep(0.5)
        result["stats_unique"] = unique
        result["lost"] = max(0, result["acked_stored"] - result["stats_unique"])
        result["peak_rss_mib"] = round(sum(peak_rss(system.pids()).values()), 1)
        return {"transport": transport, **result}
    finally:
        system.stop()
        shutil.rmtree(base, ignore_errors=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return console.guard(_main, argv)


def _main(argv: Optional[Sequence[str]]) -> int:
    parser = console.parser_for("agg-bench", __doc__)
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, of {PATHS}")
    parser.add_argument("--events", type=int, default=1_000_000, help="events per batch path [1,000,000]")
    parser.add_argument("--single-events", type=int, default=100_000,
                        help="events for the one-event-per-request path [100,000]")
    parser.add_argument("--duplicates", type=float, default=0.2, help="fraction resent [0.2]")
    parser.add_argument("--ids", choices=("random", "ordered"), default="random",
                        help="uuid4 ids, or time-ordered ids [random]")
    parser.add_argument("--topics", type=int, default=100, help="distinct topics [100]")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=1000, help="events per batch [1000]")
    parser.add_argument("--loaders", type=int, default=1, help="load processes per path [1]")
    # 16 batches of 1,000: enough in flight to keep both cores busy through a group commit.
    parser.add_argument("--concurrency", type=int, default=16,
                        help="batches in flight per load process [16]")
    parser.add_argument("--single-concurrency", type=int, default=64,
                        help="connections per load process for http-single [64]")
    parser.add_argument("--time-limit", type=float, default=600.0, help="per load phase, seconds [600]")
    parser.add_argument("--ack-requests", type=int, default=2000,
                        help="sequential one-event requests for the unloaded latency, on agg and the "
                             "bare app (0: skip) [2000]")
    parser.add_argument("--seed-events", type=int, default=5000,
                        help="events the seed's sequential publisher sends to agg and the bare app "
                             "(0: skip) [5000]")
    parser.add_argument("--overload-s", type=float, default=60.0,
                        help="seconds of open-loop overload per transport (0: skip) [60]")
    parser.add_argument("--overload-factor", type=float, default=2.0,
                        help="offered load in the overload phase, times the capacity measured [2]")
    parser.add_argument("--agg-path", default="",
                        help="run the agg of another checkout (its directory) for a before/after [this one]")
    parser.add_argument("--dir", default=None, help="where the temporary data directories go [$TMPDIR]")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("agg_settings", nargs="*", metavar="-- AGG FLAGS",
                        help="extra flags for agg run, after --, e.g. -- --workers 3")
    args = parser.parse_args(argv)
    paths = [p for p in args.paths.split(",") if p]
    if any(p not in PATHS for p in paths) or args.events < 1 or args.loaders < 1:
        parser.error(f"--paths takes {', '.join(PATHS)}; --events and --loaders at least 1")
    settings = list(args.agg_settings)
    probe = tempfile.mkdtemp(prefix="agg-bench-", dir=args.dir)
    try:
        fsync = fsync_latency(probe)
        demo = seed_demo(probe, settings, args.agg_path)
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    report = {
        "config": (f"{args.events:,} events ({args.single_events:,} for http-single), "
                   f"{args.duplicates:.0%} duplicates, {args.ids} ids, {args.topics} topics, "
                   f"batches of {args.batch_size}, {os.cpu_count()} cores"),
        "fsync": fsync, "seed_demo_s": round(demo, 4),
        "paths": [bench_path(path, args, settings) for path in paths],
        "lone": lone_publisher(args, settings) if args.ack_requests or args.seed_events else {},
        "overload": [bench_overload(t, args, settings) for t in ("http", "zmq")] if args.overload_s else [],
    }
    report["ratios"] = ratios(report)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0
