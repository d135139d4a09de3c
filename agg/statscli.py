"""``agg-stats``: print agg's statistics as a table, or as JSON with ``--json``.

By default it asks the stats process directly over ZeroMQ, at the
``endpoints.stats`` endpoint of the same configuration ``agg run`` uses
(``--data-dir``, ``AGG_*``, ``conf/agg.toml``); ``--url`` asks the HTTP front's
``GET /stats`` instead (with ``$AGG_READ_TOKEN`` as bearer token if set). Exit status 1, with a clear message, when agg is not
running.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any, Dict, Optional, Sequence

from . import config as configmod
from .client import NotRunning, query_stats


def fetch_http(url: str, timeout: float) -> Dict[str, Any]:
    request = urllib.request.Request(url.rstrip("/") + "/stats")
    token = os.environ.get("AGG_READ_TOKEN")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return json.loads(resp.read())
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="agg-stats", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--url", help="ask the HTTP front at this base URL instead of ZeroMQ")
    parser.add_argument("--endpoint", help="the stats process's endpoint [from the configuration]")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for an answer [2]")
    configmod.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        if args.url:
            stats = fetch_http(args.url, args.timeout)
        else:
            endpoint = args.endpoint or configmod.load(args).endpoint("stats")
            stats = query_stats(endpoint, args.timeout)
    except configmod.ConfigError as exc:
        print(f"agg-stats: config error: {exc}", file=sys.stderr)
        return 2
    except NotRunning as exc:
        print(f"agg-stats: agg is not running: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(stats, indent=2) if args.json else render(stats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
