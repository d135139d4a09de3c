"""Dedup worker: owns some partitions, their shards, and their counters.

Binds:     ROUTER at ``endpoints.worker`` (its index filled in); the front and
           the ingest connect DEALERs and send STORE and QUERY requests. A
           BATCH, the flat form that fronts and ingests sent before STORE, is
           still taken, so that workers can be upgraded before them.
Connects:  PUB to ``endpoints.stats_in``, where it sends its counter snapshot
           (topic ``ctr.worker.N``) after each commit, at most every
           ``stats.publish_interval_s``, and at least every ``stats.heartbeat_s``.
           PUSH to the supervisor's control socket, once, for READY.
Owns:      the shards of partitions ``p`` with ``p % workers == index``.
Stops:     on SIGTERM, after the group in hand is committed and answered.

Group commit: each tick drains every request waiting on the socket (up to
``storage.group_max_events`` events), commits them with one transaction per
partition, and only then answers each request. An answer therefore always
means "committed"; a crash before it means "not acknowledged", and the
publisher resends.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sqlite3
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import msgspec
import zmq

from . import config as configmod
from . import lifecycle, protocol
from .background import Background
from .partition import (PartitionCache, PartitionMismatch, ensure_data_dir, partitions_of_worker,
                        shard_path)
from .shard import Shard

log = logging.getLogger("agg.worker")

# An event as the front and the ingest send it: topic, event_id, timestamp, source, payload.
Event = Sequence[Any]
# A STORE body's events: [(partition, [event, ...]), ...].
Parts = Sequence[Tuple[int, Sequence[Event]]]
# A pending batch: (routing id, request id, parts).
Pending = Tuple[bytes, Any, Parts]

# A STORE body as the front and the ingest send it, type-checked in C. Anything
# else goes to Worker.check_batch, which says what is wrong.
STORE_BODY = msgspec.msgpack.Decoder(Tuple[Any, List[Tuple[int, List[Tuple[str, str, str, str, bytes]]]]])


def legacy_parts(events: Any) -> List[Any]:
    """The parts of a BATCH body from before STORE, ``[[partition, topic,
    event_id, timestamp, source, payload], ...]``: one part per event, so that
    the statuses come back in the events' order (the group joins parts of one
    partition anyway)."""
    if not isinstance(events, list) or not all(isinstance(ev, list) and ev for ev in events):
        raise protocol.ProtocolError(protocol.ERR_INVALID, "a BATCH body must be a list of events")
    return [[ev[0], [ev[1:]]] for ev in events]


class CommitClock:
    """``received_at`` stamps that never go backwards, even if the wall clock
    does: GET /events merges shards by them, and its cursor relies on their
    order agreeing with each shard's ``seq``."""

    def __init__(self, start: str = "") -> None:
        self.last = start

    def now(self) -> str:
        stamp = protocol.utc_stamp()
        if stamp > self.last:
            self.last = stamp
        return self.last


def staggered(pages: int, n: int, count: int) -> int:
    """The WAL size at which the ``n``-th of ``count`` shards checkpoints: from
    0.75 to 1.25 times ``pages``. The shards of a worker fill at about the same
    rate, so with one threshold they would all checkpoint in the same group and
    hold its answers for the sum of their checkpoints (past limits.stall_s at
    10M events); staggered, a group meets about one at a time."""
    if pages <= 0 or count <= 1:
        return pages
    return int(pages * (0.75 + 0.5 * n / (count - 1)))


class Worker:
    def __init__(self, config: configmod.Config, index: int) -> None:
        self.config = config
        self.index = index
        self.partitions = partitions_of_worker(index, config.partitions, config.workers)
        ensure_data_dir(config.data_dir, config.partitions)
        # Before the shards: rebuilding a key index can take long, and beats say it is not hung.
        self.heartbeat = lifecycle.Heartbeat(config)
        # Checkpoints and key index saves, off the commit path (see agg.background).
        paths = [shard_path(config.data_dir, p) for p in self.partitions]
        self.background = Background(paths, config.storage_synchronous)
        self.shards: Dict[int, Shard] = {}
        for n, (p, path) in enumerate(zip(self.partitions, paths)):
            try:
                self.shards[p] = Shard(path, config.storage_synchronous, config.storage_cache_mib,
                                       staggered(config.storage_wal_autocheckpoint, n, len(self.partitions)),
                                       config.storage_index_save_rows, self.heartbeat.beat,
                                       self.background.later)
            except sqlite3.DatabaseError as exc:
                raise sqlite3.DatabaseError(f"{path}: {exc}") from None
        self.background.start()
        self.clock = CommitClock(max((s.last_received_at for s in self.shards.values()), default=""))
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.endpoint = config.endpoint("worker", index)
        self.router.bind(config.bind_endpoint("worker", index))
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 1000)
        self.pub.connect(config.endpoint("stats_in"))
        self.last_publish = 0.0
        self.storage_error: Optional[str] = None  # the last failed commit's reason, until one succeeds
        self.dirty: set = set(self.partitions)
        self.partition_of = PartitionCache(config.partitions)

    # -- requests -------------------------------------------------------------------------

    def handle_batches(self, batches: List[Pending]) -> None:
        """Commit every event of ``batches``, one transaction per partition, then
        answer each batch: OK with per-event statuses, or ERR if any of its
        partitions failed to commit (the publisher resends; dedup makes it safe).
        Events move by the list, never one by one: each partition's events of
        all batches are joined, and each batch's statuses are cut back out."""
        received_at = self.clock.now()
        groups: Dict[int, List[Event]] = {}
        places: List[List[Tuple[int, int, int]]] = []  # per batch: (partition, start, count)
        for _rid, _req, parts in batches:
            place = []
            for p, events in parts:
                group = groups.get(p)
                if group is None:
                    group = groups[p] = []
                place.append((p, len(group), len(events)))
                group.extend(events)
            places.append(place)
        done: Dict[int, bytearray] = {}
        failed: Dict[int, str] = {}
        for p, events in groups.items():
            if not events:
                done[p] = bytearray()
                continue
            try:
                done[p] = self.shards[p].store(events, received_at)
            except sqlite3.Error as exc:
                log.error("commit to shard %d failed: %s", p, exc)
                failed[p] = f"storage error in partition {p}: {exc}"
                if self.storage_error is None:
                    self.last_publish = 0.0  # tell stats (and /health) now
                self.storage_error = failed[p]
                continue
            self.dirty.add(p)
            self.background.mark(self.shards[p].path)
        if not failed and self.storage_error is not None:
            log.info("commits succeed again")
            self.storage_error = None
            self.last_publish = 0.0
        self.maybe_publish()
        for (rid, req_id, _parts), place in zip(batches, places):
            reason = next((failed[p] for p, _start, _count in place if p in failed), None)
            if reason is None:
                statuses = b"".join(done[p][start:start + n] for p, start, n in place)
                reply = protocol.encode_ok(req_id, statuses)
            else:
                reply = protocol.encode_err(req_id, protocol.ERR_INTERNAL, reason)
            self.router.send_multipart([rid] + reply)

    def owns(self, partition: int, topic: str) -> bool:
        """Whether ``topic`` is in ``partition`` and that partition is this worker's."""
        return partition in self.shards and self.partition_of(topic) == partition

    def owns_all(self, parts: Parts) -> bool:
        """Whether every event of ``parts`` is in the partition it came under, and
        that partition is this worker's. Topics are few: each is checked once."""
        owns = self.owns
        for p, events in parts:
            for topic in {e[0] for e in events}:
                if not owns(p, topic):
                    return False
        return True

    def batch_of(self, body: bytes) -> Optional[Tuple[Any, Parts]]:
        """``(req_id, parts)`` of a well-formed STORE body whose events are all
        this worker's, checked in C and with a cache of known topics; None for
        anything else, which the slow path (``check_batch``) then explains."""
        try:
            req_id, parts = STORE_BODY.decode(body)
        except msgspec.DecodeError:
            return None
        return (req_id, parts) if self.owns_all(parts) else None

    def check_batch(self, data: Any) -> Parts:
        """The parts of a STORE body, or ProtocolError if any event is malformed
        or is not this worker's (a peer with another partition map must not store it)."""
        if not isinstance(data, list):
            raise protocol.ProtocolError(protocol.ERR_INVALID, "body must be a list of [partition, events]")
        for part in data:
            if not (isinstance(part, list) and len(part) == 2 and isinstance(part[0], int)
                    and isinstance(part[1], list)):
                raise protocol.ProtocolError(protocol.ERR_INVALID, "malformed [partition, events] in batch")
            for ev in part[1]:
                if not (isinstance(ev, list) and len(ev) == 5 and all(isinstance(x, str) for x in ev[:4])
                        and isinstance(ev[4], bytes)):
                    raise protocol.ProtocolError(protocol.ERR_INVALID, "malformed event in batch")
                if not self.owns(part[0], ev[0]):
                    raise protocol.ProtocolError(
                        protocol.ERR_INVALID, f"topic {ev[0]!r} is not in partition {part[0]} of worker "
                                              f"{self.index}, which owns {self.partitions}")
        return data

    def handle_query(self, rid: bytes, req_id: Any, body: Any) -> None:
        if not isinstance(body, dict):
            raise protocol.ProtocolError(protocol.ERR_INVALID, "query body must be a map")
        topic = body.get("topic")
        after = body.get("after") or {}
        limit = body.get("limit", 1000)
        if (topic is not None and not isinstance(topic, str)) or not isinstance(after, dict) \
                or not isinstance(limit, int) or limit < 1:
            raise protocol.ProtocolError(protocol.ERR_INVALID, "bad query fields")
        limit = min(limit, self.config.limits_max_events_page)
        merged: List[Any] = []
        for p, shard in self.shards.items():
            start = after.get(p, 0)
            if not isinstance(start, int):
                raise protocol.ProtocolError(protocol.ERR_INVALID, "cursor positions must be integers")
            for seq, t, e, ts, s, payload, rat in shard.page(start, limit, topic):
                merged.append([p, seq, t, e, ts, s, payload, rat])
        # Processing order across this worker's shards: commit time, then partition, then seq.
        merged.sort(key=lambda row: (row[7], row[0], row[1]))
        self.router.send_multipart([rid] + protocol.encode_ok(req_id, merged[:limit]))

    def read_request(self, rid: bytes, rest: List[bytes],
                     queries: List[Tuple[bytes, Any, Any]]) -> Optional[Pending]:
        """One request off the socket: a batch to commit with this group (returned),
        a query (put on ``queries``), or something wrong (answered ERR here)."""
        if len(rest) == 3 and rest[0] == protocol.VERSION and rest[1] == protocol.STORE:
            fast = self.batch_of(rest[2])
            if fast is not None:
                return rid, fast[0], fast[1]
        req_id: Any = None
        try:
            kind, body = protocol.decode(rest)
            if not isinstance(body, list) or len(body) != 2:
                raise protocol.ProtocolError(protocol.ERR_INVALID, "body must be [req_id, data]")
            req_id, data = body
            if kind in (protocol.STORE, protocol.BATCH):
                return rid, req_id, self.check_batch(data if kind == protocol.STORE else legacy_parts(data))
            if kind != protocol.QUERY:
                raise protocol.ProtocolError(protocol.ERR_INVALID, f"unknown kind {kind!r}")
            queries.append((rid, req_id, data))
        except protocol.ProtocolError as exc:
            self.router.send_multipart([rid] + protocol.encode_err(req_id, exc.code, exc.reason))
        return None

    def drain(self) -> None:
        """Read every waiting request, commit the batches as one group, answer all."""
        batches: List[Pending] = []
        queries: List[Tuple[bytes, Any, Any]] = []
        count = 0
        limit = self.config.storage_group_max_events
        while count < limit:
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                break
            pending = self.read_request(frames[0], frames[1:], queries)
            if pending is not None:
                batches.append(pending)
                count += sum(len(events) for _p, events in pending[2])
        if batches:
            self.handle_batches(batches)
        for rid, req_id, data in queries:
            try:
                self.handle_query(rid, req_id, data)
            except protocol.ProtocolError as exc:
                self.router.send_multipart([rid] + protocol.encode_err(req_id, exc.code, exc.reason))
            except sqlite3.Error as exc:
                log.error("query failed: %s", exc)
                self.router.send_multipart([rid] + protocol.encode_err(
                    req_id, protocol.ERR_INTERNAL, f"storage error: {exc}"))

    # -- counters -------------------------------------------------------------------------

    def snapshot(self, partitions: Iterable[int]) -> Dict[str, Any]:
        return {
            "worker": self.index,
            "pid": os.getpid(),
            "owns": self.partitions,
            "storage_error": self.storage_error,
            "time": time.time(),
            "partitions": {p: self.shards[p].totals() + [self.shards[p].counters]
                           for p in partitions},
        }

    def maybe_publish(self, force: bool = False) -> None:
        """Send the counters of the partitions that changed (all of them on a
        heartbeat). Called before a group's answers go out, so that /stats has
        seen a commit by the time its publisher has its acknowledgement."""
        now = time.monotonic()
        heartbeat = force or now - self.last_publish >= self.config.stats_heartbeat_s
        if heartbeat or (self.dirty and now - self.last_publish >= self.config.stats_publish_interval_s):
            topic = protocol.TOPIC_WORKER + str(self.index).encode()
            changed = self.partitions if heartbeat else sorted(self.dirty)
            self.pub.send_multipart([topic] + protocol.encode(protocol.COUNTERS, self.snapshot(changed)))
            self.last_publish = now
            self.dirty.clear()

    # -- loop -----------------------------------------------------------------------------

    def serve(self, stop: lifecycle.StopFlag) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        # Wake at least every 100 ms to see a stop; sooner if counters wait for their interval.
        interval = self.config.stats_publish_interval_s or 0.1
        tick_ms = max(1, int(min(0.1, self.config.stats_heartbeat_s, interval) * 1000))
        while not stop:
            self.heartbeat.beat()
            if poller.poll(tick_ms):
                self.drain()
            else:
                self.idle()
            self.maybe_publish()
        self.maybe_publish(force=True)

    def idle(self) -> None:
        """A tick with no request: a good time to save key indexes."""
        for shard in self.shards.values():
            shard.idle()

    def close(self) -> None:
        self.background.stop()  # its last jobs may be index saves: before the shards close
        for shard in self.shards.values():
            shard.close()
        self.router.close()
        self.pub.close()
        self.heartbeat.close()
        self.ctx.term()


def return_big_blocks_to_the_os() -> None:
    """Have glibc serve blocks of 1 MiB and more with mmap, always. By default it
    raises that threshold after the first such free, and the key index's arrays,
    replaced by a copy at each merge, then come from the heap, whose freed
    holes stay in the RSS: 17 against 14.5 MiB per million keys, measured."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc: its allocator has its own ways
    m_mmap_threshold = -3
    libc.mallopt(m_mmap_threshold, 1 << 20)


def run(config: configmod.Config, index: int) -> int:
    stop = lifecycle.StopFlag()
    return_big_blocks_to_the_os()
    try:
        worker = Worker(config, index)
    except sqlite3.DatabaseError as exc:
        log.error("cannot open shard %s", exc)
        return 1
    except PartitionMismatch as exc:
        log.error("%s", exc)
        return 2
    except zmq.ZMQError as exc:
        log.error("cannot bind %s: %s", config.endpoint("worker", index), exc)
        return 1
    log.info("bound %s, owns partitions %s", worker.endpoint, worker.partitions)
    lifecycle.announce_ready(config, "worker", index, worker.endpoint, worker.ctx)
    try:
        worker.serve(stop)
    finally:
        worker.close()
    log.info("stopped")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, config = configmod.from_command_line(
        "agg-worker", "run one agg dedup worker", argv,
        lambda parser: parser.add_argument("--index", type=int, default=0, help="worker index, from 0"))
    lifecycle.setup_logging(f"worker.{args.index}", config.log_level)
    if not 0 <= args.index < config.workers:
        log.error("--index %d is outside 0..%d", args.index, config.workers - 1)
        return 2
    return run(config, args.index)


if __name__ == "__main__":
    raise SystemExit(main())
