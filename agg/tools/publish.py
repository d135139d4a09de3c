"""``agg-publish``: the seed's demo publisher, made deterministic and resilient.

It builds ``--events`` events (default 5,000) over a few topics, of which a
fraction ``--duplicates`` (default 0.2) are resends of earlier events, all
derived from ``--seed``: the same seed gives the same ids, topics, payloads
and order, so running it twice against the same data is 100% duplicates the
second time. It sends them, over HTTP or the native ZeroMQ ingest
(``--transport zmq``), in batches of ``--batch-size`` from
``--concurrency`` connections, retries a batch with backoff on 503 or a lost
connection (safe: agg drops the duplicates a retry creates), and ends with a
summary of what agg acknowledged.

Exit status: 0 if every event was acknowledged, 1 if some were rejected or
never acknowledged, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Sequence

import zmq

from ..client import HttpPublisher, Publisher, PublishResult, server_key_of

DEFAULT_TOPICS = ("user.created", "order.placed", "payment.processed", "inventory.updated",
                  "email.sent", "session.started", "cart.abandoned", "shipment.dispatched")
BASE_TIME = datetime.datetime(2025, 10, 21, 14, 30, tzinfo=datetime.timezone.utc)


def make_events(count: int, duplicates: float, seed: int,
                topics: Sequence[str] = DEFAULT_TOPICS) -> List[Dict[str, Any]]:
    """``count`` events, ``round(count * duplicates)`` of them resends, in a
    deterministic shuffled order."""
    rng = random.Random(seed)
    dup_count = round(count * duplicates)
    unique_count = count - dup_count
    if unique_count <= 0 and count:
        raise ValueError("--duplicates leaves no unique event")
    uniques = []
    for i in range(unique_count):
        topic = topics[rng.randrange(len(topics))]
        uniques.append({
            "topic": topic,
            "event_id": f"evt-{seed}-{i:07d}",
            "timestamp": (BASE_TIME + datetime.timedelta(seconds=i)).isoformat().replace("+00:00", "Z"),
            "source": "agg-publish",
            "payload": {"seq": i, "user_id": rng.randrange(1, 100000),
                        "amount": round(rng.uniform(1, 500), 2)},
        })
    events = uniques + [uniques[rng.randrange(unique_count)] for _ in range(dup_count)]
    rng.shuffle(events)
    return events


class Progress:
    """A one-line progress bar on a terminal; silent otherwise."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled
        self.done = 0
        self.start = time.monotonic()
        self.last_draw = 0.0
        self.lock = threading.Lock()

    def advance(self, n: int) -> None:
        with self.lock:
            self.done += n
            now = time.monotonic()
            if self.enabled and (now - self.last_draw > 0.1 or self.done >= self.total):
                self.last_draw = now
                width = 30
                filled = int(width * self.done / max(self.total, 1))
                rate = self.done / max(now - self.start, 1e-9)
                sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] "
                                 f"{self.done}/{self.total} events  {rate:,.0f}/s")
                sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agg-publish", description=__doc__.split("\n\n")[0])
    parser.add_argument("--transport", choices=("http", "zmq"), default="http",
                        help="HTTP POST /publish, or the native ZeroMQ ingest [http]")
    parser.add_argument("--endpoint", default=os.environ.get("AGG_INGEST", "tcp://127.0.0.1:5555"),
                        help="the native ingest, for --transport zmq "
                             "[$AGG_INGEST or tcp://127.0.0.1:5555]")
    parser.add_argument("--curve-server-key", metavar="CERT",
                        help="with --transport zmq: the ingest's public certificate (enables CURVE)")
    parser.add_argument("--curve-client-cert", metavar="CERT",
                        help="with --transport zmq: this publisher's secret certificate")
    parser.add_argument("--url", default=os.environ.get("AGG_URL", "http://127.0.0.1:8080"),
                        help="agg's HTTP base URL [$AGG_URL or http://127.0.0.1:8080]")
    parser.add_argument("--events", type=int, default=5000, help="events to send [5000]")
    parser.add_argument("--duplicates", type=float, default=0.2,
                        help="fraction of the events that are resends [0.2]")
    parser.add_argument("--seed", type=int, default=42, help="seed of ids, topics and order [42]")
    parser.add_argument("--topics", default=",".join(DEFAULT_TOPICS), help="comma-separated topics")
    parser.add_argument("--batch-size", type=int, default=500, help="events per request [500]")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight [4]")
    parser.add_argument("--retries", type=int, default=30, help="tries per batch before giving up [30]")
    parser.add_argument("--max-backoff", type=float, default=2.0, help="longest wait between tries [2 s]")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request timeout [30 s]")
    parser.add_argument("--time-limit", type=float, default=600.0,
                        help="stop retrying after this many seconds [600]")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    topics = [t for t in args.topics.split(",") if t]
    if args.events < 1 or args.batch_size < 1 or args.concurrency < 1 or not topics \
            or not 0 <= args.duplicates < 1:
        parser.error("--events, --batch-size, --concurrency must be >= 1, --duplicates in [0, 1), "
                     "--topics not empty")
    events = make_events(args.events, args.duplicates, args.seed, topics)
    progress = Progress(len(events), sys.stderr.isatty() and not args.no_progress)
    publisher: Any
    try:
        if args.transport == "zmq":
            server_key = server_key_of(args.curve_server_key) if args.curve_server_key else None
            publisher = Publisher(args.endpoint, batch_size=args.batch_size, max_inflight=args.concurrency,
                                  ack_timeout=args.timeout, max_retries=args.retries,
                                  max_backoff=args.max_backoff, curve_server_key=server_key,
                                  curve_client_cert=args.curve_client_cert)
        else:
            publisher = HttpPublisher(args.url, batch_size=args.batch_size, max_inflight=args.concurrency,
                                      ack_timeout=args.timeout, max_retries=args.retries,
                                      max_backoff=args.max_backoff)
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    except zmq.ZMQError as exc:
        parser.error(f"--endpoint {args.endpoint}: {exc}")
    try:
        summary: PublishResult = publisher.publish(events, progress.advance, time_limit=args.time_limit)
    finally:
        if args.transport == "zmq":
            publisher.close()
    progress.finish()
    print(json.dumps(summary.to_json()) if args.json else summary.render())
    return 0 if summary.acknowledged == summary.events else 1


if __name__ == "__main__":
    raise SystemExit(main())
