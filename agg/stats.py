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
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Set, Tuple

import zmq

from . import config as configmod
from . import lifecycle, protocol
from .config import Config
from .protocol import Counts, EdgeSnapshot, PartitionCounts, SupervisorSnapshot, WorkerSnapshot
from .rundirs import make_ipc_dirs
from .sockets import drain

log = logging.getLogger("agg.stats")


INGEST_COUNTS = ("batches", "events", "refused_overload", "refused_unavailable")


class WorkerSeen(NamedTuple):
    pid: int
    seen: float  # monotonic
    partitions: List[int]
    storage_error: Optional[str]


class EdgeSeen(NamedTuple):
    seen: float  # monotonic
    inflight: List[int]  # events in flight per worker


def counts_json(counts: Counts) -> Dict[str, int]:
    return {"received": counts.received, "unique_processed": counts.unique,
            "duplicate_dropped": counts.duplicates}


class Totals:
    """The state of the stats process: latest snapshots, and their sum."""

    def __init__(self, workers: int, stale_after: float) -> None:
        self.started = lifecycle.started_at()
        self.expected_workers = workers
        self.stale_after = stale_after
        self.partitions: Dict[int, PartitionCounts] = {}
        self.workers: Dict[int, WorkerSeen] = {}
        # edge ("role.pid") -> {reason: count}; kept after an edge restarts: its rejects happened
        self.rejected: Dict[str, Dict[str, int]] = {}
        # edge -> its events in flight; counted while fresh only: what a dead edge had in
        # flight is no longer queued anywhere.
        self.inflight: Dict[str, EdgeSeen] = {}
        # edge -> (its role, what it counted); kept after it restarts, like its rejects
        self.counted: Dict[str, Tuple[str, Dict[str, int]]] = {}
        self.restarts: Dict[str, int] = {}
        self.down: Set[str] = set()  # children the supervisor reports dead or not READY

    def absorb(self, topic: bytes, kind: bytes, body: bytes) -> None:
        """Take one snapshot (``body`` still encoded); ProtocolError if it is not one."""
        now = time.monotonic()
        if kind == protocol.COUNTERS and topic.startswith(protocol.TOPIC_WORKER):
            worker = protocol.unpack_as(body, WorkerSnapshot)
            self.workers[worker.worker] = WorkerSeen(worker.pid, now, worker.owns, worker.storage_error)
            for p, snap in worker.partitions.items():
                mine = self.partitions.get(p)
                if mine is None or snap.received >= mine.received:
                    self.partitions[p] = snap
        elif kind == protocol.EDGE and topic.startswith((protocol.TOPIC_EDGE, protocol.TOPIC_EDGE_BEFORE)):
            edge = protocol.unpack_as(body, EdgeSnapshot)
            name = f"{edge.role}.{edge.pid}"
            self.rejected[name] = edge.rejected
            self.inflight[name] = EdgeSeen(now, edge.inflight)
            if edge.counted:
                self.counted[name] = (edge.role, edge.counted)
        elif kind == protocol.SUPER and topic == protocol.TOPIC_SUPER:
            supervisor = protocol.unpack_as(body, SupervisorSnapshot)
            self.restarts = supervisor.restarts
            self.down = set(supervisor.down)

    def summary(self) -> Dict[str, Any]:
        now = time.monotonic()
        total = Counts()
        per_topic: Dict[str, Counts] = {}
        for snap in self.partitions.values():
            total += snap.counts
            for topic, counts in snap.topics.items():
                per_topic[topic] = per_topic.get(topic, Counts()) + counts
        rejected: Dict[str, int] = {}
        for reasons in self.rejected.values():
            for reason, count in reasons.items():
                rejected[reason] = rejected.get(reason, 0) + count
        inflight = [0] * self.expected_workers
        for edge in self.inflight.values():
            if now - edge.seen <= self.stale_after:
                for index, n in enumerate(edge.inflight[:self.expected_workers]):
                    inflight[index] += n
        return {
            **counts_json(total),
            "rejected": sum(rejected.values()),
            "rejected_by_reason": rejected,
            "topics": sorted(per_topic),
            "topic_counts": {t: counts_json(c) for t, c in sorted(per_topic.items())},
            "workers": {str(i): self.worker(i, now) for i in range(self.expected_workers)},
            "restarts": self.restarts,
            "inflight_events": inflight,
            "uptime": round(time.time() - self.started, 3),
            "ingest": self.edge_counts("ingest", INGEST_COUNTS),
        }

    def edge_counts(self, role: str, names: Sequence[str]) -> Dict[str, int]:
        """What every edge of ``role``, past and present, counted: the sum by name."""
        out = dict.fromkeys(names, 0)
        for edge_role, counted in self.counted.values():
            if edge_role == role:
                for name, n in counted.items():
                    out[name] = out.get(name, 0) + n
        return out

    def worker(self, index: int, now: float) -> Dict[str, Any]:
        """What /stats and /health say of worker ``index``."""
        info = self.workers.get(index)
        if info is None:
            return {**counts_json(Counts()), "alive": False, "pid": None, "last_seen_s": None,
                    "partitions": [], "storage_error": None}
        owned = sum((self.partitions[p].counts for p in info.partitions if p in self.partitions), Counts())
        return {**counts_json(owned),
                "alive": now - info.seen <= self.stale_after and f"worker.{index}" not in self.down,
                "pid": info.pid, "last_seen_s": round(now - info.seen, 3),
                "partitions": info.partitions, "storage_error": info.storage_error}


class StatsServer:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.totals = Totals(config.workers, config.stats.stale_after_s)
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, protocol.TOPIC_ALL)
        self.sub.bind(config.bind_endpoint("stats_in"))
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.bind(config.bind_endpoint("stats"))

    def drain_counters(self) -> None:
        for frames in drain(self.sub):
            try:
                kind = protocol.check_envelope(frames[1:])
                self.totals.absorb(frames[0], kind, frames[3])
            except protocol.ProtocolError as exc:
                log.warning("ignored a bad snapshot on %r: %s", frames[0][:40], exc)

    def answer(self) -> None:
        for frames in drain(self.router):
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


def run(config: Config) -> int:
    stop = lifecycle.StopFlag()
    make_ipc_dirs(config.bind_endpoint("stats_in"), config.bind_endpoint("stats"))
    try:
        server = StatsServer(config)
    except zmq.ZMQError as exc:
        log.error("cannot bind %s and %s: %s", config.bind_endpoint("stats_in"),
                  config.bind_endpoint("stats"), exc)
        return 1
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
    lifecycle.setup_logging("stats", config.log_level, config.log_format)
    return run(config)


if __name__ == "__main__":
    raise SystemExit(main())
