"""One partition's SQLite file: its events and its counters, and the in-memory
index of its keys.

Only the worker that owns the partition opens its shard, so a shard has a
single writer and no lock contention. ``store`` is the group commit, in three
phases: ``classify`` asks the key index which events are new (a hash only
points: the row behind a hit is read and its key compared), ``commit``
appends those and adds to the per-topic counters in one transaction, so that
events and counters are never out of step, even after a SIGKILL in the
middle (SQLite rolls the partial transaction back at the next open), and
``advance`` moves the in-memory view forward, only after COMMIT.

Processing order is ``seq``, the rowid: SQLite appends a row at the largest
seq plus one, and rows are never deleted, so it only grows. The key index
knows each row by its seq, so ``commit`` checks that its rows landed where
it expected.

The key index is right only if nobody else writes the shard, so a shard
holds ``<shard>.lock`` while open: a second worker given the same partition
(a wrong worker count in a distributed set-up) gets ``ShardInUse``.

Shards created before the key index have a unique SQLite index on
``(topic, event_id)`` too; it is kept, and still refuses a repeat.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import operator
import sqlite3
from typing import Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Set, Tuple

from msgspec.structs import astuple

from ..protocol import Counts, Event, PartitionCounts, StoredRow
from . import schema
from .flush import WalFile
from .indexfile import IndexFile, Later, read
from .keyindex import KeyIndex, key_hash, key_hashes
from .lock import Locked, hold_lock

log = logging.getLogger("agg.storage")

# A start that reads this many rows into a key index says so in the log.
LOG_ROWS = 200_000
KEY = operator.attrgetter("topic", "event_id")


def sqlite_synchronous(mode: str) -> str:
    """SQLite's own mode for ``storage.synchronous``: GROUP commits as NORMAL (and flushes after)."""
    return "NORMAL" if mode == "GROUP" else mode


class StorageError(Exception):
    """A shard cannot be opened, or a commit to it failed; nothing of it was stored."""


class ShardInUse(StorageError):
    """Another process has the shard open."""


class Verdict(NamedTuple):
    """What ``classify`` found of a group's events."""

    statuses: bytearray       # per event: STORED (new) or DUPLICATE
    hashes: List[int]         # per event, its key's hash
    collided: Set[int]        # positions of new keys whose hash the index holds already
    bumps: Dict[str, Counts]  # what the group adds to each topic's counters

    def new(self, events: Sequence[Event]) -> Sequence[Event]:
        return events if all(self.statuses) else list(itertools.compress(events, self.statuses))


class Shard:
    """The SQLite file of one partition, opened by its owning worker."""

    def __init__(self, path: str, synchronous: str = "GROUP", cache_mib: int = 64,
                 wal_autocheckpoint: int = 16000, index_save_rows: int = 100_000,
                 progress: Callable[[], None] = lambda: None,
                 background: Optional[Later] = None, partition: int = 0) -> None:
        self.path = path
        self.partition = partition
        self.progress = progress  # called now and then while a long key index rebuild runs
        self.index_file = IndexFile(path + ".keys", index_save_rows, background)
        # GROUP: commits do not fsync; the worker flushes this WAL file before it answers.
        self.wal: Optional[WalFile] = WalFile(path) if synchronous == "GROUP" else None
        try:
            self.lock = hold_lock(path + ".lock")
        except Locked:
            raise ShardInUse(f"{path}: in use by another process (two workers given this "
                             f"partition?)") from None
        try:
            self.db = self._connect(synchronous, cache_mib, wal_autocheckpoint)
            with self.transaction() as db:
                for statement in schema.SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
            self.load()
        except sqlite3.Error as exc:
            self.lock.close()
            raise StorageError(f"{path}: {exc}") from None

    def _connect(self, synchronous: str, cache_mib: int, wal_autocheckpoint: int) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves (see transaction()).
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        # WAL must be set outside a transaction; it persists in the file.
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={sqlite_synchronous(synchronous)}")
        db.execute(f"PRAGMA cache_size=-{cache_mib * 1024}")
        db.execute("PRAGMA temp_store=MEMORY")
        # A backstop: the worker's background thread checkpoints, off the commit path.
        db.execute(f"PRAGMA wal_autocheckpoint={wal_autocheckpoint}")
        return db

    def load(self) -> None:
        """Read what the shard keeps in memory from the file: its last row, its
        counters, and its key index."""
        last = self.db.execute(schema.LAST_ROW).fetchone()
        seq, received_at, topic, event_id = last if last else (0, "", "", "")
        self.last_seq: int = seq
        self.last_received_at: str = received_at
        self.last_key: int = key_hash(topic, event_id) if last else 0  # of the row at last_seq
        self.counters: Dict[str, Counts] = {
            topic: Counts(r, u, d) for topic, r, u, d in self.db.execute(schema.COUNTERS)}
        self.index = self.open_index()

    def open_index(self) -> KeyIndex:
        """The key index: the file, if it matches this shard, plus the rows after it;
        else every row."""
        covered = 0
        loaded = read(self.index_file.path)
        if loaded is not None:
            index, covered, covered_key = loaded
            row = self.db.execute(schema.KEY_AT, (covered,)).fetchone()
            if not (covered <= self.last_seq and (key_hash(*row) if row else 0) == covered_key):
                log.warning("%s does not match its shard; rebuilding the key index", self.index_file.path)
                loaded = None
        if loaded is None:
            index, covered = KeyIndex(), 0
        if self.last_seq - covered >= LOG_ROWS:
            log.info("%s: reading %d rows into the key index (about %.0f s)", self.path,
                     self.last_seq - covered, (self.last_seq - covered) * 3.5e-6)
        index.bulk_load(self.db.execute(schema.KEYS_AFTER, (covered,)), lambda _count: self.progress())
        self.index_file.saved_at = covered
        return index

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            if self.db.in_transaction:  # SQLite may have rolled back already (disk full)
                self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- the group commit -----------------------------------------------------------------

    def store(self, events: Sequence[Event], received_at: str) -> bytes:
        """Insert the new ones of ``events`` (at least one) in one transaction,
        stamped ``received_at``. Return per event 1 (``protocol.STORED``) if it
        is new, 0 if it duplicates one stored before or earlier in ``events``.
        ``StorageError`` if the commit failed: then nothing of it is stored."""
        verdict = self.classify(events)
        new = verdict.new(events)
        try:
            self.commit(new, verdict.bumps, received_at)
        except sqlite3.Error as exc:
            raise StorageError(f"storage error in partition {self.partition}: {exc}") from None
        self.advance(verdict, len(new), received_at)
        return bytes(verdict.statuses)

    def classify(self, events: Sequence[Event]) -> Verdict:
        """Which of ``events`` are new. Written for groups of thousands: per event,
        one comprehension hashes the key, and the rest (set and array lookups,
        counting) runs in C. Python looks only at the events the index may know
        and at hashes that repeat within the group."""
        hashes = key_hashes(map(KEY, events))
        hits = self.index.candidates(hashes)
        wanted = hashes.tolist()
        look = set(hits)
        if len(set(wanted)) < len(events):  # a key sent twice in the group (or a collision in it)
            repeats = {h for h, n in collections.Counter(wanted).items() if n > 1}
            look.update(i for i, h in enumerate(wanted) if h in repeats)
        statuses = bytearray(b"\x01") * len(events)
        collided: Set[int] = set()
        if look:
            stored = self.stored_keys(seq for seqs in hits.values() for seq in seqs)
            in_group: Dict[int, List[Tuple[str, str]]] = {}  # hash -> new keys of this group
            for i in sorted(look):
                key = KEY(events[i])
                seqs, earlier = hits.get(i), in_group.get(wanted[i])
                if (seqs is not None and any(stored.get(s) == key for s in seqs)) \
                        or (earlier is not None and key in earlier):
                    statuses[i] = 0
                    continue
                if seqs is not None or earlier is not None:
                    collided.add(i)
                in_group.setdefault(wanted[i], []).append(key)
        received = collections.Counter(event.topic for event in events)
        dropped = collections.Counter(events[i].topic for i in look if not statuses[i])
        bumps = {topic: Counts(n, n - dropped[topic], dropped[topic]) for topic, n in received.items()}
        return Verdict(statuses, wanted, collided, bumps)

    def stored_keys(self, seqs: Iterable[int]) -> Dict[int, Tuple[str, str]]:
        """seq -> (topic, event_id) of the given rows."""
        wanted = list(seqs)
        keys: Dict[int, Tuple[str, str]] = {}
        for start in range(0, len(wanted), schema.KEYS_PER_QUERY):
            chunk = wanted[start:start + schema.KEYS_PER_QUERY]
            for seq, topic, event_id in self.db.execute(schema.keys_of(len(chunk)), chunk):
                keys[seq] = (topic, event_id)
        return keys

    def commit(self, new: Sequence[Event], bumps: Dict[str, Counts], received_at: str) -> None:
        """Append ``new`` and add ``bumps`` to the counters, in one transaction."""
        first = self.last_seq + 1
        try:
            with self.transaction() as db:
                if new:
                    self.insert(new, received_at)
                    # Rows are appended at max(seq) + 1: a seq other than ours means the file
                    # has rows this shard did not write (a commit reported failed that reached
                    # the disk, another writer). The file is the truth: the group fails, the
                    # shard reads the file again, and the group's resend meets the rows.
                    (last,) = db.execute(schema.LAST_INSERTED).fetchone()
                    if last != first + len(new) - 1:
                        raise sqlite3.IntegrityError(f"rows were appended at {last}, not at "
                                                     f"{first + len(new) - 1}")
                db.executemany(schema.BUMP_COUNTERS, [(topic, *astuple(counts))
                                                      for topic, counts in bumps.items()])
        except sqlite3.IntegrityError:
            log.error("%s has rows its key index did not know; reading it again", self.path)
            self.load()
            raise

    def insert(self, rows: Sequence[Event], received_at: str) -> None:
        """Append ``rows``, each stamped ``received_at``, inside the current transaction."""
        full = len(rows) - len(rows) % schema.ROWS_PER_INSERT
        chain = itertools.chain.from_iterable
        for start in range(0, full, schema.ROWS_PER_INSERT):
            self.db.execute(schema.INSERT_MANY,
                            [received_at, *chain(map(astuple, rows[start:start + schema.ROWS_PER_INSERT]))])
        if full < len(rows):
            self.db.executemany(schema.INSERT, [(*astuple(row), received_at) for row in rows[full:]])

    def advance(self, verdict: Verdict, added: int, received_at: str) -> None:
        """After COMMIT: the key index, the last row and the counters move forward."""
        first = self.last_seq + 1
        statuses, hashes = verdict.statuses, verdict.hashes
        new_hashes = hashes if added == len(hashes) else list(itertools.compress(hashes, statuses))
        pairs = zip(new_hashes, range(first, first + added))
        if verdict.collided:
            positions = list(itertools.compress(range(len(statuses)), statuses))
            placed = list(zip(positions, pairs))
            self.index.add([pair for i, pair in placed if i not in verdict.collided],
                           [pair for i, pair in placed if i in verdict.collided])
        else:
            self.index.add(pairs)
        if added:
            self.last_seq, self.last_key = first + added - 1, new_hashes[-1]
            self.last_received_at = received_at
        for topic, bump in verdict.bumps.items():
            mine = self.counters.get(topic)
            self.counters[topic] = bump if mine is None else mine + bump
        if self.index_file.due(self.last_seq):
            self.index_file.save(self.index, self.last_seq, self.last_key)

    # -- the rest -------------------------------------------------------------------------

    def idle(self) -> None:
        """Idle time: save the key index if many rows are not in its file."""
        if self.index_file.due(self.last_seq, idle=True):
            self.index_file.save(self.index, self.last_seq, self.last_key)

    def rows_after(self, after: int, limit: int, topic: Optional[str] = None) -> Iterator[StoredRow]:
        """Up to ``limit`` events with ``seq > after``, in processing order, read
        as they are asked for (a merge of shards stops early)."""
        partition = self.partition
        try:
            if topic is None:
                cursor = self.db.execute(schema.PAGE, (after, limit))
            else:
                cursor = self.db.execute(schema.PAGE_OF_TOPIC, (topic, after, limit))
            for row in cursor:
                yield StoredRow(partition, *row)
        except sqlite3.Error as exc:
            raise StorageError(f"storage error in partition {partition}: {exc}") from None

    def probe(self) -> None:
        """A small write, kept in a table of its own: ``StorageError`` if the
        shard still cannot be written (a full disk, a read-only file)."""
        try:
            with self.transaction() as db:
                db.execute(schema.PROBE, (self.last_received_at,))
        except sqlite3.Error as exc:
            raise StorageError(f"storage error in partition {self.partition}: {exc}") from None

    def on_progress(self, callback: Callable[[], int], steps: int) -> None:
        """Have SQLite call ``callback`` every ``steps`` steps of a statement."""
        self.db.set_progress_handler(callback, steps)

    def totals(self) -> Counts:
        return sum(self.counters.values(), Counts())

    def snapshot(self) -> PartitionCounts:
        """The counters as the stats process takes them."""
        totals = self.totals()
        return PartitionCounts(totals.received, totals.unique, totals.duplicates, self.counters)

    def close(self) -> None:
        """Close the file, saving the key index first if rows are not in it.
        A background thread given to this shard must be stopped before."""
        if self.last_seq > self.index_file.saved_at:
            self.index_file.save(self.index, self.last_seq, self.last_key, now=True)
        self.db.close()
        if self.wal is not None:
            self.wal.close()
        self.lock.close()
