"""``agg-stats``: print agg's statistics as a table, or as JSON with ``--json``.

By default it asks the stats process directly over ZeroMQ, at the
``endpoints.stats`` endpoint of the same configuration ``agg run`` uses
(``--data-dir``, ``--run-dir``, ``--config``, ``AGG_*``, ``conf/agg.toml``);
``--url`` asks the HTTP front's ``GET /stats`` instead (with ``--token`` or
``$AGG_READ_TOKEN`` as bearer token). ``--watch`` redraws a live view: rates
per second, per worker and per topic, worker health and restarts, cut to the
terminal. Exit status 1, with a clear message, when agg does not answer
(``--watch`` says so and keeps trying, and exits 1 if its last frame found
agg down).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from typing import Any, Callable, Dict, Optional, Sequence

from .. import config as configmod
from ..client import NotRunning, query_stats
from . import console
from .httpget import get_json, read_token
from .screen import visible
from .statsview import render, render_watch

HOME = "\x1b[H\x1b[2J"  # cursor home, clear the screen: the only control --watch writes


def fetcher(args: argparse.Namespace) -> Callable[[], Dict[str, Any]]:
    """How to ask for the statistics, from the arguments; ConfigError if they are bad."""
    if args.url:
        token = read_token(args.token)

        def from_front() -> Dict[str, Any]:
            stats: Dict[str, Any] = get_json(args.url, "/stats", args.timeout, token)
            return stats
        return from_front
    if args.endpoint:
        endpoint, where = args.endpoint, ""
    else:
        config = configmod.load(args)
        endpoint, where = config.endpoint("stats"), f" (the stats endpoint of data dir {config.data_dir})"

    def fetch() -> Dict[str, Any]:
        try:
            return query_stats(endpoint, args.timeout)
        except NotRunning as exc:
            raise NotRunning(f"agg is not running: {exc}{where}; if agg runs with another data "
                             "directory give its --data-dir or --endpoint, or ask the front with "
                             "--url http://HOST:PORT") from None
    return fetch


def watch(fetch: Callable[[], Dict[str, Any]], interval: float, count: Optional[int]) -> int:
    """Redraw a live view every ``interval`` seconds, like top; Ctrl-C (exit 130) to quit."""
    tty = sys.stdout.isatty()
    previous: Optional[Dict[str, Any]] = None
    last = time.monotonic()
    frames, status = 0, 0
    while count is None or frames < count:
        now = time.monotonic()
        size = shutil.get_terminal_size() if tty else os.terminal_size((10 ** 6, 10 ** 6))
        try:
            stats = fetch()
            frame, status = render_watch(stats, previous, now - last, size), 0
            previous, last = stats, now
        except NotRunning as exc:
            frame = f"{visible(str(exc))}\n(retrying every {interval:g} s; Ctrl-C to quit)"
            previous, status = None, 1
        sys.stdout.write((HOME if tty else "\n") + frame + "\n")
        sys.stdout.flush()
        frames += 1
        if count is None or frames < count:
            time.sleep(interval)  # the refresh period of the view
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = console.parser_for("agg-stats", __doc__)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--url", help="ask the HTTP front at this base URL instead of ZeroMQ")
    parser.add_argument("--token", help="with --url: the read token [$AGG_READ_TOKEN, $AGG_HTTP_READ_TOKEN]")
    parser.add_argument("--endpoint", help="the stats process's endpoint [from the configuration]")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for an answer [2]")
    parser.add_argument("--watch", action="store_true", help="redraw a live view, like top")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between --watch frames [1]")
    parser.add_argument("--count", type=int, help="stop --watch after this many frames")
    where = parser.add_argument_group("where agg runs, as given to agg run (other settings: AGG_* or the file)")
    where.add_argument("--config", metavar="FILE", help="agg's TOML configuration file")
    for key, text in (("data_dir", "agg's data directory [./data]"),
                      ("run_dir", "agg's run directory, of its ipc:// sockets [DATA_DIR/run]")):
        where.add_argument(configmod.flag_name(key), dest=configmod.dest_name(key), metavar="DIR", help=text)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    return console.guard(_main, argv)


def _main(argv: Optional[Sequence[str]]) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")  # a topic name no encoding of stdout holds
    try:
        fetch = fetcher(args)
    except configmod.ConfigError as exc:
        console.say("agg-stats", f"config error: {exc}")
        return 2
    if args.watch:
        return watch(fetch, args.interval, args.count)
    try:
        stats = fetch()
    except NotRunning as exc:
        console.say("agg-stats", visible(str(exc)))
        return 1
    print(json.dumps(stats, indent=2) if args.json else render(stats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
