"""Dedup worker: owns some partitions, their shards, and their counters.

Binds:     ROUTER at ``endpoints.worker`` (its index filled in); the front and
           the ingest connect DEALERs and send STORE and QUERY requests
           (``agg.intake`` reads and checks them).
Connects:  PUB to ``endpoints.stats_in``, where it sends its counter snapshot
           (topic ``ctr.worker.N``) after each commit, at most every
           ``stats.publish_interval_s``, and at least every ``stats.heartbeat_s``.
           PUSH to the supervisor's control socket: READY, then ALIVE beats.
Owns:      the shards of partitions ``p`` with ``p % workers == index``.
Stops:     on SIGTERM, after the group in hand is committed and answered.

Each turn of its loop: read every request waiting (up to
``storage.group_max_events`` events), commit the stores as one group (one
transaction per partition), publish the counters, and only then answer. An
answer therefore always means "committed"; a crash before it means "not
acknowledged", and the publisher resends. A store whose sender has given up
(its deadline passed while it waited in the socket) is not begun.

Busy is not dead: while its loop works on something long (a large page, a
long commit or flush, or no CPU on a busy machine), a thread of its own, the
pulse (``agg.pulse``), tells each peer heard from lately that it is still at
it (BUSY), so that a peer does not take it for stalled.
A shard that failed a commit is tried with a small write every
``PROBE_EVERY`` seconds of idle time, so that health turns back by itself
once the cause is gone (space freed).
"""

from __future__ import annotations

import ctypes
import heapq
import itertools
import logging
import os
import time
from typing import Dict, List, Optional, Sequence, Set

import zmq

from . import config as configmod
from . import lifecycle, protocol
from .intake import Ask, Intake, Refusal, Store
from .ledger import Ledger
from .pulse import Pulse
from .partition import PartitionMismatch, ensure_data_dir, partitions_of_worker, shard_path
from .protocol import StoredRow, WorkerSnapshot, processing_order
from .rundirs import make_ipc_dirs, prepare_dirs
from .sockets import drain
from .storage import Shard, StorageError
from .storage.background import Background
from .storage.flush import Flusher

log = logging.getLogger("agg.worker")

PROBE_EVERY = 0.5  # seconds between two tries of a failing shard, when idle
PROGRESS_STEPS = 20_000  # SQLite VM steps between two heartbeats while busy


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
    hold its answers for the sum of their checkpoints; staggered, a group
    meets about one at a time."""
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
        self.shards = self.open_shards()
        # Set when a WAL flush failed: the worker stops, to be started again (see flush).
        self.flush_failed: Optional[str] = None
        self.clock = CommitClock(max((s.last_received_at for s in self.shards.values()), default=""))
        self.intake = Intake(index, self.partitions, config.partitions, config.limits.max_events_page)
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.endpoint = config.endpoint("worker", index)
        self.router.bind(config.bind_endpoint("worker", index))
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 1000)
        self.pub.connect(config.endpoint("stats_in"))
        self.last_publish = 0.0
        self.dirty: Set[int] = set(self.partitions)
        self.failing: Dict[int, str] = {}  # partition -> why its last commit failed
        self.last_probe = 0.0
        # BUSY to the peers while the loop works; it shares the ROUTER under its lock.
        self.pulse = Pulse(self.router, config.limits.stall_s / 4, config.limits.ack_timeout_s)
        self.flusher = Flusher(len(self.shards))

    def open_shards(self) -> Dict[int, Shard]:
        storage = self.config.storage
        paths = [shard_path(self.config.data_dir, p) for p in self.partitions]
        # Checkpoints and key index saves, off the commit path (see agg.storage.background).
        self.background = Background(paths, storage.synchronous)
        shards: Dict[int, Shard] = {}
        for n, (p, path) in enumerate(zip(self.partitions, paths)):
            shards[p] = Shard(path, storage.synchronous, storage.cache_mib,
                              staggered(storage.wal_autocheckpoint, n, len(self.partitions)),
                              storage.index_save_rows, self.heartbeat.beat, self.background.later, p)
            shards[p].on_progress(self.still_busy, PROGRESS_STEPS)
        self.background.start()
        return shards

    @property
    def storage_error(self) -> Optional[str]:
        return next(iter(self.failing.values()), None)

    # -- a turn of the loop ---------------------------------------------------------------

    def drain(self) -> None:
        """Read every waiting request, commit the stores as one group, answer all."""
        stores: List[Store] = []
        asks: List[Ask] = []
        events = 0
        incoming = drain(self.router)
        while True:
            with self.pulse.lock:
                frames = next(incoming, None)
            if frames is None:
                break
            request = self.intake.read(frames)
            if isinstance(request, Store):
                stores.append(request)
                events += request.events
            elif isinstance(request, Ask):
                asks.append(request)
            else:
                self.refuse(request)
            self.pulse.peers[request.rid] = time.monotonic()
            if events >= self.config.storage.group_max_events:
                break
        if stores:
            self.commit_group(stores)
        for ask in asks:
            self.answer_query(ask)

    def refuse(self, refusal: Refusal) -> None:
        self.send(refusal.rid, protocol.encode_err(refusal.req_id, refusal.code, refusal.reason))

    def send(self, rid: bytes, frames: List[bytes]) -> None:
        with self.pulse.lock:
            self.router.send_multipart([rid] + frames)

    def commit_group(self, stores: Sequence[Store]) -> None:
        """Commit every live event of ``stores``, one transaction per partition,
        then answer each: OK with per-event statuses, or ERR if any of its
        partitions failed to commit (the publisher resends; dedup makes it safe)."""
        now = time.time()
        live = []
        for store in stores:
            if store.deadline and store.deadline < now:
                self.send(store.rid, protocol.encode_err(
                    store.req_id, protocol.ERR_EXPIRED, "its deadline passed before a worker "
                    "could begin it; nothing was stored"))
            else:
                live.append(store)
        ledger = Ledger()
        for store in live:
            ledger.add(store.parts)
        received_at = self.clock.now()
        done: Dict[int, bytes] = {}
        failed: Dict[int, str] = {}
        for p, events in ledger.joined.items():
            if not events:
                done[p] = b""
                continue
            try:
                done[p] = self.shards[p].store(events, received_at)
            except StorageError as exc:
                log.error("commit to shard %d failed: %s", p, exc)
                failed[p] = str(exc)
        self.flush(done, failed)
        self.note_commits(done, failed)
        self.maybe_publish()
        for i, store in enumerate(live):
            reason = ledger.failure(i, failed)
            if reason is None:
                self.send(store.rid, protocol.encode_ok(store.req_id, ledger.statuses_of(i, done)))
            else:
                self.send(store.rid, protocol.encode_err(store.req_id, protocol.ERR_INTERNAL, reason))

    def flush(self, done: Dict[int, bytes], failed: Dict[int, str]) -> None:
        """Make the group's commits durable before any answer (``storage.synchronous``
        GROUP; see ``agg.storage.flush``). A shard whose flush failed is answered
        as failed. Linux may drop the pages an fsync could not write and mark them
        clean, so what this process has in memory of that shard may be ahead of
        the disk: the worker stops after this group and the supervisor starts it
        again, to read the shard from its file (PostgreSQL does the same)."""
        # Only the shards that committed: a partition with no events in the group wrote nothing.
        unflushed = self.flusher.flush({p: wal for p, statuses in done.items()
                                        if statuses and (wal := self.shards[p].wal) is not None})
        for p, reason in unflushed.items():
            log.critical("storage error in partition %d: %s; restarting this worker", p, reason)
            del done[p]
            failed[p] = f"storage error in partition {p}: {reason}"
            self.flush_failed = reason

    def note_commits(self, done: Dict[int, bytes], failed: Dict[int, str]) -> None:
        """Keep track of which shards fail; stats (and /health) hear of a change at once."""
        was = self.storage_error
        for p in done:
            self.failing.pop(p, None)
            self.dirty.add(p)
            self.background.mark(self.shards[p].path)
        self.failing.update(failed)
        if (was is None) != (self.storage_error is None):
            log.info("commits succeed again" if was else "storage error: %s", self.storage_error)
            self.last_publish = 0.0

    def answer_query(self, ask: Ask) -> None:
        """A page of events: the shards' rows merged in processing order, each
        shard read only as far as the merge needs."""
        query = ask.query
        partitions = self.shards.items()
        try:
            merged = heapq.merge(*(shard.rows_after(query.after.get(p, 0), query.limit, query.topic)
                                   for p, shard in partitions), key=processing_order)
            rows: List[StoredRow] = list(itertools.islice(merged, query.limit))
        except StorageError as exc:
            log.error("query failed: %s", exc)
            self.send(ask.rid, protocol.encode_err(ask.req_id, protocol.ERR_INTERNAL, str(exc)))
            return
        self.send(ask.rid, protocol.encode_ok(ask.req_id, rows))

    def still_busy(self) -> int:
        """SQLite's progress handler, called every ``PROGRESS_STEPS`` steps of a
        statement: tell the supervisor that the loop is not hung (BUSY to the
        peers is the pulse's). 0: carry on."""
        self.heartbeat.beat()
        return 0

    # -- counters -------------------------------------------------------------------------

    def snapshot(self, partitions: Sequence[int]) -> WorkerSnapshot:
        return WorkerSnapshot(self.index, os.getpid(), self.partitions, self.storage_error, time.time(),
                              {p: self.shards[p].snapshot() for p in partitions})

    def maybe_publish(self, force: bool = False) -> None:
        """Send the counters of the partitions that changed (all of them on a
        heartbeat). Called before a group's answers go out, so that /stats has
        seen a commit by the time its publisher has its acknowledgement."""
        now = time.monotonic()
        stats = self.config.stats
        heartbeat = force or now - self.last_publish >= stats.heartbeat_s
        if heartbeat or (self.dirty and now - self.last_publish >= stats.publish_interval_s):
            topic = protocol.TOPIC_WORKER + str(self.index).encode()
            changed = self.partitions if heartbeat else sorted(self.dirty)
            self.pub.send_multipart([topic] + protocol.encode(protocol.COUNTERS, self.snapshot(changed)))
            self.last_publish = now
            self.dirty.clear()

    # -- loop -----------------------------------------------------------------------------

    def serve(self, stop: lifecycle.StopFlag) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        self.pulse.start()
        # Wake at least every 100 ms to see a stop; sooner if counters wait for their interval.
        stats = self.config.stats
        interval = stats.publish_interval_s or 0.1
        tick_ms = max(1, int(min(0.1, stats.heartbeat_s, interval) * 1000))
        while not stop and self.flush_failed is None:
            self.heartbeat.beat()
            if poller.poll(tick_ms):
                self.pulse.work()
                try:
                    self.drain()
                finally:
                    self.pulse.rest()  # before the next poll: the pulse keeps off the socket
            else:
                self.idle()
            self.maybe_publish()
        self.maybe_publish(force=True)

    def idle(self) -> None:
        """A tick with no request: a good time to save key indexes, and to try
        the shards that failed."""
        for shard in self.shards.values():
            shard.idle()
        now = time.monotonic()
        if self.failing and now - self.last_probe >= PROBE_EVERY:
            self.last_probe = now
            healed = {}
            for p in list(self.failing):
                try:
                    self.shards[p].probe()
                except StorageError:
                    continue
                healed[p] = b""
            if healed:
                self.note_commits(healed, {})

    def close(self) -> None:
        self.background.stop()  # its last jobs may be index saves: before the shards close
        self.flusher.close()
        self.pulse.stop()
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
    holes stay in the RSS (17 against 14.5 MiB per million keys)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc: its allocator has its own ways
    m_mmap_threshold = -3
    libc.mallopt(m_mmap_threshold, 1 << 20)


def run(config: configmod.Config, index: int) -> int:
    stop = lifecycle.StopFlag()
    return_big_blocks_to_the_os()
    problem = prepare_dirs(config)  # under agg run, done already: then a quick check
    if problem:
        log.error("%s", problem)
        return 2
    make_ipc_dirs(config.bind_endpoint("worker", index))
    try:
        worker = Worker(config, index)
    except StorageError as exc:
        log.error("cannot open shard %s", exc)
        return 1
    except PartitionMismatch as exc:
        log.error("%s", exc)
        return 2
    except zmq.ZMQError as exc:
        log.error("cannot bind %s: %s", config.endpoint("worker", index), exc)
        return 1
    except OSError as exc:  # a data directory it cannot write (a root-owned volume, read-only)
        log.error("data_dir: %s: %s", exc.filename or config.data_dir, exc.strerror or exc)
        return 2
    log.info("bound %s, owns partitions %s", worker.endpoint, worker.partitions)
    lifecycle.announce_ready(config, "worker", index, worker.endpoint, worker.ctx)
    try:
        worker.serve(stop)
    finally:
        worker.close()
    if worker.flush_failed is not None:
        return 1  # to be started again, and read its shards from their files
    log.info("stopped")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, config = configmod.from_command_line(
        "agg-worker", "run one agg dedup worker", argv,
        lambda parser: parser.add_argument("--index", type=int, default=0, help="worker index, from 0"))
    lifecycle.setup_logging(f"worker.{args.index}", config.log_level, config.log_format)
    if not 0 <= args.index < config.workers:
        log.error("--index %d is outside 0..%d", args.index, config.workers - 1)
        return 2
    return run(config, args.index)


if __name__ == "__main__":
    raise SystemExit(main())
