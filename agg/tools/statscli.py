"""``agg-stats``: print agg's statistics as a table, or as JSON with ``--json``.

By default it asks the stats process directly over ZeroMQ, at the
``endpoints.stats`` endpoint of the same configuration ``agg run`` uses
(``--data-dir``, ``AGG_*``, ``conf/agg.toml``); ``--url`` asks the HTTP front's
``GET /stats`` instead (with ``$AGG_READ_TOKEN`` as bearer token if set).
``--watch`` redraws a live view: rates per second, per worker and per topic,
worker health and restarts. Exit status 1, with a clear message, when agg is
not running (``--watch`` says so and keeps trying).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Dict, Optional, Sequence

from .. import config as configmod
from ..client import NotRunning, query_stats


def fetch_http(url: str, timeout: float) -> Dict[str, Any]:
    request = urllib.request.Request(url.rstrip("/") + "/stats")
    token = os.environ.get("AGG_READ_TOKEN")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            stats: Dict[str, Any] = json.loads(resp.read())
            return stats
    except urllib.error.HTTPError as exc:
        raise NotRunning(f"{url}/stats answered HTTP {exc.code}") from None
    except (OSError, ValueError) as exc:
        raise NotRunning(f"agg is not running at {url} ({exc})") from None


def render(stats: Dict[str, Any]) -> str:
    lines = [
        f"received           {stats['received']:>12,}",
        f"unique_processed   {stats['unique_processed']:>12,}",
        f"duplicate_dropped  {stats['duplicate_dropped']:>12,}",
        f"rejected           {stats.get('rejected', 0):>12,}",
        f"uptime             {stats['uptime']:>12,.1f} s",
    ]
    workers = stats.get("workers") or {}
    if workers:
        lines.append("")
        lines.append(f"{'worker':<8} {'state':<6} {'pid':>8}  partitions")
        for index, info in sorted(workers.items(), key=lambda kv: int(kv[0])):
            state = "up" if info["alive"] else "DOWN"
            lines.append(f"{index:<8} {state:<6} {info['pid'] or '-':>8}  "
                         f"{','.join(str(p) for p in info['partitions'])}")
    counts = stats.get("topic_counts") or {}
    if counts:
        width = max(len("topic"), *(len(t) for t in counts))
        lines.append("")
        lines.append(f"{'topic':<{width}} {'received':>10} {'unique':>10} {'duplicates':>10}")
        for topic, c in counts.items():
            lines.append(f"{topic:<{width}} {c['received']:>10,} {c['unique_processed']:>10,} "
                         f"{c['duplicate_dropped']:>10,}")
    return "\n".join(lines)


def render_watch(stats: Dict[str, Any], previous: Optional[Dict[str, Any]], elapsed: float) -> str:
    """One frame of --watch: rates since the previous frame, then the table."""
    def rate(now: float, before: float) -> str:
        return f"{(now - before) / elapsed:>10,.0f}/s" if previous and elapsed > 0 else f"{'-':>12}"

    prev = previous or {}
    lines = [
        f"agg  up {stats['uptime']:,.0f} s   "
        f"in {rate(stats['received'], prev.get('received', 0)).strip()}   "
        f"unique {rate(stats['unique_processed'], prev.get('unique_processed', 0)).strip()}   "
        f"duplicates {rate(stats['duplicate_dropped'], prev.get('duplicate_dropped', 0)).strip()}",
    ]
    if "inflight_events" in stats:
        lines.append("queue depth (events in flight per worker): "
                     + ", ".join(str(n) for n in stats["inflight_events"]))
    lines.append("")
    lines.append(f"{'worker':<8} {'state':<6} {'pid':>8} {'restarts':>8} {'events in':>14} {'received':>12}")
    before_workers = prev.get("workers", {})
    restarts = stats.get("restarts", {})
    for index, info in sorted(stats.get("workers", {}).items(), key=lambda kv: int(kv[0])):
        state = "up" if info["alive"] else "DOWN"
        if info.get("storage_error"):
            state = "DISK"
        was = before_workers.get(index, {}).get("received", 0)
        lines.append(f"{index:<8} {state:<6} {info['pid'] or '-':>8} {restarts.get(f'worker.{index}', 0):>8} "
                     f"{rate(info.get('received', 0), was):>14} {info.get('received', 0):>12,}")
    lines.append("")
    lines.append(render(stats).split("\n\n")[-1] if stats.get("topic_counts") else "(no events yet)")
    return "\n".join(lines)


def watch(fetch: Any, interval: float, count: Optional[int]) -> int:
    """Redraw a live view every ``interval`` seconds, like top; Ctrl-C to quit."""
    tty = sys.stdout.isatty()
    previous: Optional[Dict[str, Any]] = None
    last = time.monotonic()
    frames = 0
    try:
        while count is None or frames < count:
            now = time.monotonic()
            try:
                stats = fetch()
                frame = render_watch(stats, previous, now - last)
                previous, last = stats, now
            except NotRunning as exc:
                frame = f"agg is not running: {exc}\n(retrying every {interval:g} s; Ctrl-C to quit)"
                previous = None
            sys.stdout.write(("\x1b[H\x1b[2J" if tty else "\n") + frame + "\n")
            sys.stdout.flush()
            frames += 1
            if count is None or frames < count:
                time.sleep(interval)  # the refresh period of the view
    except KeyboardInterrupt:
        pass
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="agg-stats", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--url", help="ask the HTTP front at this base URL instead of ZeroMQ")
    parser.add_argument("--endpoint", help="the stats process's endpoint [from the configuration]")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for an answer [2]")
    parser.add_argument("--watch", action="store_true", help="redraw a live view, like top")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between --watch frames [1]")
    parser.add_argument("--count", type=int, help="stop --watch after this many frames")
    configmod.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        if args.url:
            def fetch() -> Dict[str, Any]:
                return fetch_http(args.url, args.timeout)
        else:
            endpoint = args.endpoint or configmod.load(args).endpoint("stats")

            def fetch() -> Dict[str, Any]:
                return query_stats(endpoint, args.timeout)
    except configmod.ConfigError as exc:
        print(f"agg-stats: config error: {exc}", file=sys.stderr)
        return 2
    if args.watch:
        return watch(fetch, args.interval, args.count)
    try:
        stats = fetch()
    except NotRunning as exc:
        print(f"agg-stats: agg is not running: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(stats, indent=2) if args.json else render(stats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
