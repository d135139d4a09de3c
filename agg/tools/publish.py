"""``agg-publish``: the seed's demo publisher, made deterministic and resilient.

It builds ``--events`` events (default 5,000) over a few topics, of which a
fraction ``--duplicates`` (default 0.2) are resends of earlier events, all
derived from ``--seed``: the same seed gives the same ids, topics, payloads
and order, so running it twice against the same data is 100% duplicates the
second time. It sends them, over HTTP or the native ZeroMQ ingest
(``--transport zmq``), in batches of ``--batch-size`` from
``--concurrency`` connections, retries a batch with backoff on 503 or a lost
connection (safe: agg drops the duplicates a retry creates), and ends with a
summary of what agg acknowledged. ``--from FILE`` (or ``-`` for stdin)
publishes one's own events instead, one JSON object per line.

While agg does not answer it says so on stderr, once, and it stops at
``--time-limit``. Exit status: 0 if every event was acknowledged, 1 if some
were rejected or never acknowledged, 2 for bad arguments or input, 130 after
Ctrl-C (with the summary of what was acknowledged until then).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import signal
import sys
from typing import Any, Dict, List, Optional, Sequence

import zmq

from ..client import HttpPublisher, Interrupted, Publisher, PublishResult, server_key_of, tls_context
from . import console
from .jsonlines import BadLine, read_events
from .progress import Progress, Trouble

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


def build_parser() -> argparse.ArgumentParser:
    parser = console.parser_for("agg-publish", __doc__)
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
                        help="agg's HTTP base URL, http:// or https:// [$AGG_URL or http://127.0.0.1:8080]")
    parser.add_argument("--token", help="bearer token of POST /publish [$AGG_PUBLISH_TOKEN]")
    parser.add_argument("--cacert", metavar="FILE",
                        help="with an https:// URL: the CA certificate(s) to check agg's against "
                             "[the system's]")
    parser.add_argument("--insecure", action="store_true",
                        help="with an https:// URL: check no certificate (for tests only)")
    parser.add_argument("--from", dest="source", metavar="FILE",
                        help="publish the events of this JSON-lines file (- for stdin), one object "
                             "per line, instead of generated ones")
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
                        help="give up on what is not acknowledged after this many seconds [600]")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    return console.guard(_main, argv)


def load_events(parser: argparse.ArgumentParser, args: argparse.Namespace) -> List[Dict[str, Any]]:
    """The events to send: ``--from``'s (BadLine or OSError if it cannot be read), or generated ones."""
    if args.source == "-":
        return read_events(sys.stdin, "stdin")
    if args.source is not None:
        try:
            with open(args.source, encoding="utf-8") as fh:
                return read_events(fh, args.source)
        except UnicodeDecodeError:
            raise BadLine(f"{args.source}: not UTF-8") from None
    topics = [t for t in args.topics.split(",") if t]
    if args.events < 1 or not topics or not 0 <= args.duplicates < 1:
        parser.error("--events must be >= 1, --duplicates in [0, 1), --topics not empty")
    return make_events(args.events, args.duplicates, args.seed, topics)


def make_publisher(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Any:
    try:
        if args.transport == "zmq":
            server_key = server_key_of(args.curve_server_key) if args.curve_server_key else None
            return Publisher(args.endpoint, batch_size=args.batch_size, max_inflight=args.concurrency,
                             ack_timeout=args.timeout, max_retries=args.retries,
                             max_backoff=args.max_backoff, curve_server_key=server_key,
                             curve_client_cert=args.curve_client_cert)
        tls = None
        if args.url.startswith("https:"):
            try:
                tls = tls_context(args.cacert, args.insecure)
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                parser.error(f"--cacert {args.cacert}: {getattr(exc, 'strerror', None) or exc}")
        return HttpPublisher(args.url, batch_size=args.batch_size, max_inflight=args.concurrency,
                             ack_timeout=args.timeout, max_retries=args.retries,
                             max_backoff=args.max_backoff, token=args.token, tls=tls)
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    except zmq.ZMQError as exc:
        parser.error(f"--endpoint {args.endpoint}: {exc}")


def _main(argv: Optional[Sequence[str]]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.concurrency < 1:
        parser.error("--batch-size and --concurrency must be >= 1")
    try:
        events = load_events(parser, args)
    except (BadLine, OSError) as exc:  # bad input, not bad usage: one line, no usage text
        console.say("agg-publish", f"--from {exc}" if isinstance(exc, BadLine)
                    else f"--from {args.source}: {exc.strerror}")
        return 2
    publisher = make_publisher(parser, args)
    target = args.endpoint if args.transport == "zmq" else args.url
    progress = Progress(len(events), sys.stderr.isatty() and not args.no_progress)
    progress.advance(0)  # the bar at 0 at once: a terminal sees that it runs before agg answers
    status = 0
    try:
        with Trouble("agg-publish", target, args.time_limit, progress) as trouble:
            summary: PublishResult = publisher.publish(events, progress.advance, time_limit=args.time_limit,
                                                       on_trouble=trouble)
    except Interrupted as stop:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C would cut the summary
        summary, status = stop.result, console.INTERRUPTED
    finally:
        if args.transport == "zmq":
            publisher.close()
    progress.finish()
    print(json.dumps(summary.to_json()) if args.json else summary.render(), flush=True)
    if status:
        console.say("agg-publish", f"interrupted: {summary.acknowledged} of {summary.events} events "
                                   "acknowledged")
        return status
    if summary.acknowledged < summary.events:
        last = summary.errors[-1] if summary.errors else "?"
        if last.startswith("TLS:") and not args.cacert:
            last += " (--cacert FILE trusts a private CA)"
        console.say("agg-publish", f"{summary.events - summary.acknowledged} of {summary.events} events "
                                   f"not acknowledged: {last}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
