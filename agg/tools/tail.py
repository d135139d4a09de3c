"""``agg-tail``: print a topic's events as they arrive, one JSON object a line.

It pages ``GET /events?topic=TOPIC`` with the cursor each page returns: a
cursor stays valid for ever and a page after it holds only the events
committed since, so polling with the last one follows the topic, the way
``tail -f`` follows a file. By default it starts at the end (new events
only); ``--from-start`` prints the stored ones first. Without TOPIC it
follows every topic. ``--count N`` stops after N events. It says on stderr
when it has begun to follow. If agg goes away it says so once and keeps
asking; Ctrl-C ends it (exit status 130).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
import urllib.parse
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from ..client import NotRunning, tls_context
from . import console
from .httpget import Denied, get_json, read_token

PAGE = 1000  # events per request; agg's limits.max_events_page is 10,000 by default


class Follower:
    """The pages of one listing, after a cursor that moves with each page."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.token = read_token(args.token)
        self.tls = tls_context(args.cacert, args.insecure) if args.url.startswith("https:") else None
        self.cursor: Optional[str] = None
        self.answered = False  # agg down before it ever answered is an error, not a wait

    def page(self) -> Tuple[List[Dict[str, Any]], bool]:
        """The next page of events and whether more are waiting; the cursor moves past them."""
        query: Dict[str, Any] = {"limit": PAGE}
        if self.args.topic:
            query["topic"] = self.args.topic
        if self.cursor:
            query["cursor"] = self.cursor
        body = get_json(self.args.url, "/events?" + urllib.parse.urlencode(query), self.args.timeout,
                        self.token, self.tls)
        self.cursor = body["next_cursor"]
        self.answered = True
        return body["events"], bool(body["has_more"])

    def skip_to_end(self) -> None:
        """Move the cursor past every stored event (there is no cheaper way to the end)."""
        more = True
        while more:
            _events, more = self.page()

    def follow(self, interval: float) -> Iterator[Dict[str, Any]]:
        """Events as they are committed, for ever; trouble is told once, until it passes."""
        troubled = False
        while True:
            try:
                events, more = self.page()
            except NotRunning as exc:
                # A 4xx is ours to mend; a 503 or no answer passes (a restart, a worker back soon).
                if not self.answered or (isinstance(exc, Denied) and 400 <= exc.status < 500):
                    raise
                events, more = [], False
                troubled = self._trouble(str(exc), troubled)
            else:
                troubled = False
            yield from events
            if not more:
                time.sleep(interval)  # the polling period: how late a new event may show

    def _trouble(self, message: str, troubled: bool) -> bool:
        if not troubled:
            console.say("agg-tail", f"{message}; retrying every {self.args.interval:g} s")
        return True


def build_parser() -> argparse.ArgumentParser:
    parser = console.parser_for("agg-tail", __doc__)
    parser.add_argument("topic", nargs="?", metavar="TOPIC", help="the topic to follow [every topic]")
    parser.add_argument("--from-start", action="store_true", help="print the stored events first")
    parser.add_argument("--count", type=int, help="stop after this many events")
    parser.add_argument("--url", default=os.environ.get("AGG_URL", "http://127.0.0.1:8080"),
                        help="agg's HTTP base URL [$AGG_URL or http://127.0.0.1:8080]")
    parser.add_argument("--token", help="the read token [$AGG_READ_TOKEN, $AGG_HTTP_READ_TOKEN]")
    parser.add_argument("--cacert", metavar="FILE", help="with an https:// URL: the CA to check agg's "
                                                         "certificate against [the system's]")
    parser.add_argument("--insecure", action="store_true", help="with an https:// URL: check nothing")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between polls [0.5]")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for a page [10]")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    return console.guard(_main, argv)


def _main(argv: Optional[Sequence[str]]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.count is not None and args.count < 1:
        parser.error("--count must be at least 1")
    try:
        follower = Follower(args)
    except (OSError, ValueError) as exc:
        parser.error(f"--cacert {args.cacert}: {getattr(exc, 'strerror', None) or exc}")
    try:
        # Either way agg is asked once before "following" is said: down at the start is an error.
        first: List[Dict[str, Any]] = []
        if args.from_start:
            first, _more = follower.page()
        else:
            follower.skip_to_end()
        what = f"topic {json.dumps(args.topic)}" if args.topic else "every topic"
        console.say("agg-tail", f"following {what} at {args.url} "
                                f"({'from the start' if args.from_start else 'new events'}; Ctrl-C to stop)")
        printed = 0
        for event in itertools.chain(first, follower.follow(args.interval)):
            # ensure_ascii: a control character in a field is \\u001b, never raw on a terminal.
            sys.stdout.write(json.dumps(event, ensure_ascii=True) + "\n")
            printed += 1
            if printed == args.count:
                break
            sys.stdout.flush()
        sys.stdout.flush()
    except NotRunning as exc:
        console.say("agg-tail", str(exc))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
