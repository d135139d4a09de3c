"""Stats process: collects counter snapshots and answers with their sum.

Binds:     SUB at ``endpoints.stats_in`` (workers, front, ingest and supervisor
           connect PUBs and send absolute snapshots, topic first);
           ROUTER at ``endpoints.stats`` for STATS requests (front, agg-stats).
Owns:      the latest snapshot of every partition, front and supervisor.
Stops:     on SIGTERM.

Snapshots are absolute and cumulative, so a lost message heals with the next
one. Totals are kept per *partition*, not per worker, and a partition keeps
the snapshot with the highest ``received``: counters only grow, so a late
message from a worker that has since died, or one from before a change of
the worker count, can never pull a total back or count a partition twice.
Partitions keep their last figures while their worker is down (they are
committed, so still true); the worker itself is reported down once silent
for ``stats.stale_after_s``.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Dict, List, Optional, Sequence

import zmq

from . import config as configmod
from . import lifecycle, protocol

log = logging.getLogger("agg.stats")


class Totals:
    """The state of the stats process: latest snapshots, and their sum."""

    def __init__(self, workers: int, stale_after: float) -> None:
        self.started = lifecycle.started_at()
        self.expected_workers = workers
        self.stale_after = stale_after
        # partition -> [received, unique, duplicates, {topic: [r, u, d]}]
        self.partitions: Dict[int, List[Any]] = {}
        # worker index -> {"pid", "seen" (monotonic), "partitions"}
        self.workers: Dict[int, Dict[str, Any]] = {}
        # (role, pid) -> {reason: count}; kept after a front restarts: its rejects happened
        self.rejected: Dict[str, Dict[str, int]] = {}
        # (role, pid) -> (when seen, events in flight per worker); counted while fresh only:
        # what a dead edge had in flight is no longer queued anywhere.
        self.inflight: Dict[str, Any] = {}
        self.restarts: Dict[str, int] = {}
        self.down: set = set()  # children the supervisor reports dead or not READY
        self.supervisor_seen: Optional[float] = None

    def absorb(self, topic: bytes, kind: bytes, body: Any) -> None:
        now = time.monotonic()
        if kind == protocol.COUNTERS and topic.startswith(protocol.TOPIC_WORKER):
            index = int(body["worker"])
            self.workers[index] = {"pid": body["pid"], "seen": now,
                                   "partitions": list(body["owns"]),
                                   "storage_error": body.get("storage_error")}
            for p, snap in body["partitions"].items():
                mine = self.partitions.get(p)
                if mine is None or snap[0] >= mine[0]:
                    self.partitions[p] = snap
        elif kind == protocol.FRONT and topic.startswith(protocol.TOPIC_FRONT):
            edge = f"{body['role']}.{body['pid']}"
            self.rejected[edge] = dict(body["rejected"])
            self.inflight[edge] = (now, [int(n) for n in body.get("inflight", ())])
        elif kind == protocol.SUPER and topic == protocol.TOPIC_SUPER:
            self.restarts = dict(body["restarts"])
            self.down = set(body.get("down", ()))
            self.supervisor_seen = now

    def summary(self) -> Dict[str, Any]:
        now = time.monotonic()
        received = unique = duplicates = 0
        per_topic: Dict[str, List[int]] = {}
        for r, u, d, topics in self.partitions.values():
            received += r
            unique += u
            duplicates += d
            for topic, (tr, tu, td) in topics.items():
                mine = per_topic.setdefault(topic, [0, 0, 0])
                mine[0] += tr
                mine[1] += tu
                mine[2] += td
        rejected: Dict[str, int] = {}
        for reasons in self.rejected.values():
            for reason, count in reasons.items():
                rejected[reason] = rejected.get(reason, 0) + count
        inflight = [0] * self.expected_workers
        for seen, counts in self.inflight.values():
            if now - seen <= self.stale_after:
                for index, n in enumerate(counts[:self.expected_workers]):
                    inflight[index] += n
        workers = {}
        for index in range(self.expected_workers):
            info = self.workers.get(index)
            alive = (info is not None and now - info["seen"] <= self.stale_after
                     and f"worker.{index}" not in self.down)
            owned: List[List[Any]] = [self.partitions[p] for p in (info["partitions"] if info else [])
                                      if p in self.partitions]
            workers[str(index)] = {
                "received": sum(snap[0] for snap in owned),
                "unique_processed": sum(snap[1] for snap in owned),
                "duplicate_dropped": sum(snap[2] for snap in owned),
                "alive": alive,
                "pid": info["pid"] if info else None,
                "last_seen_s": round(now - info["seen"], 3) if info else None,
                "partitions": info["partitions"] if info else [],
                "storage_error": info.get("storage_error") if info else None,
            }
        return {
            "received": received,
            "unique_processed": unique,
            "duplicate_dropped": duplicates,
            "rejected": sum(rejected.values()),
            "rejected_by_reason": rejected,
            "topics": sorted(per_topic),
            "topic_counts": {t: {"received": r, "unique_processed": u, "duplicate_dropped": d}
                             for t, (r, u, d) in sorted(per_topic.items())},
            "workers": workers,
            "restarts": self.restarts,
            "inflight_events": inflight,
            "uptime": round(time.time() - self.started, 3),
        }


class StatsServer:
    def __init__(self, config: configmod.Config) -> None:
        self.config = config
        self.totals = Totals(config.workers, config.stats_stale_after_s)
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, protocol.TOPIC_ALL)
        self.sub.bind(config.bind_endpoint("stats_in"))
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.bind(config.bind_endpoint("stats"))

    def drain_counters(self) -> None:
        while True:
            try:
                frames = self.sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                kind, body = protocol.decode(frames[1:])
                self.totals.absorb(frames[0], kind, body)
            except (protocol.ProtocolError, KeyError, TypeError, ValueError) as exc:
                log.warning("ignored a bad snapshot on %r: %s", frames[0][:40], exc)

    def answer(self) -> None:
        while True:
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            rid, req_id = frames[0], None
            try:
                kind, body = protocol.decode(frames[1:])
                if kind != protocol.STATS or not isinstance(body, list) or len(body) != 2:
                    raise protocol.ProtocolError(protocol.ERR_INVALID, "expected a STATS request")
                req_id = body[0]
                # Fold in every snapshot already here, so an answer is as fresh as it can be.
                self.drain_counters()
                reply = protocol.encode_ok(req_id, self.totals.summary())
            except protocol.ProtocolError as exc:
                reply = protocol.encode_err(req_id, exc.code, exc.reason)
            self.router.send_multipart([rid] + reply)

    def serve(self, stop: lifecycle.StopFlag) -> None:
        poller = zmq.Poller()
        poller.register(self.sub, zmq.POLLIN)
        poller.register(self.router, zmq.POLLIN)
        heartbeat = lifecycle.Heartbeat(self.config)
        try:
            while not stop:
                heartbeat.beat()
                ready = dict(poller.poll(100))
                if self.sub in ready:
                    self.drain_counters()
                if self.router in ready:
                    self.answer()
        finally:
            heartbeat.close()

    def close(self) -> None:
        self.sub.close()
        self.router.close()
        self.ctx.term()


def run(config: configmod.Config) -> int:
    stop = lifecycle.StopFlag()
    server = StatsServer(config)
    log.info("bound %s and %s", config.endpoint("stats_in"), config.endpoint("stats"))
    lifecycle.announce_ready(config, "stats", 0, config.endpoint("stats"), server.ctx)
    try:
        server.serve(stop)
    finally:
        server.close()
    log.info("stopped")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    _args, config = configmod.from_command_line("agg-stats-server", "run the agg stats process", argv)
    lifecycle.setup_logging("stats", config.log_level)
    return run(config)


if __name__ == "__main__":
    raise SystemExit(main())
