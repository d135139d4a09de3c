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
from typing import Any, Dict, List, Optional, Sequence

from ...client import HttpPublisher
from .. import console
from ..publish import make_events
from .load import drive
from .report import render, summarize
from .system import System, cpu_seconds, fsync_latency, peak_rss

PATHS = ("http-single", "http-batch", "zmq-batch")


def seed_demo(base: str, settings: List[str]) -> float:
    """Seconds from the first request to the last acknowledgement of the seed demo."""
    system = System(base, settings)
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
    system = System(base, settings)
    try:
        spec = {
            "path": path, "events": args.single_events if path == "http-single" else args.events,
            "duplicates": args.duplicates, "ids": args.ids, "topics": args.topics, "seed": args.seed,
            "loaders": args.loaders, "batch": args.batch_size, "time_limit": args.time_limit,
            "concurrency": args.concurrency if path != "http-single" else args.single_concurrency,
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
        # Ready again after a crash: nothing may need a rebuild that grows with the data.
        system.crash()
        started = time.monotonic()
        system = System(base, settings)
        restart = time.monotonic() - started
        return {"path": path, "full": full,
                "half_load": {k: half[k] for k in ("events_per_s", "p50_ms", "p99_ms") if k in half},
                "cpu_us_per_event": cpu_us, "restart_after_kill_s": round(restart, 2),
                "peak_rss_mib": rss}
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
        demo = seed_demo(probe, settings)
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    report = {
        "config": (f"{args.events:,} events ({args.single_events:,} for http-single), "
                   f"{args.duplicates:.0%} duplicates, {args.ids} ids, {args.topics} topics, "
                   f"batches of {args.batch_size}, {os.cpu_count()} cores"),
        "fsync": fsync, "seed_demo_s": round(demo, 4),
        "paths": [bench_path(path, args, settings) for path in paths],
    }
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0
