"""One partition's SQLite file: its events and its counters, and the in-memory
index of its keys.

Only the worker that owns the partition opens its shard, so a shard has a
single writer and no lock contention. ``store`` is the group commit: it asks
the key index (``keyindex``) which events are new, and one transaction
appends those and adds to the per-topic counters, so that events and counters
are never out of step, even after a SIGKILL in the middle (SQLite's journal
rolls back the partial transaction at the next open). The index moves forward
only after COMMIT.

Processing order is ``seq``, the rowid: SQLite appends a row at the largest
seq plus one, and rows are never deleted, so it only grows. The key index
knows each row by its seq, so ``store`` checks that its rows landed where it
expected.

The key index is right only if nobody else writes the shard, so a shard
holds ``<shard>.lock`` while open: a second worker given the same partition
(a wrong worker count in a distributed set-up) is refused at start.

Shards created before the key index have a unique SQLite index on
``(topic, event_id)`` too; it is kept, and still refuses a repeat.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import sqlite3
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

from . import keyindex, lifecycle
from .keyindex import KeyIndex, key_hash, key_hashes

log = logging.getLogger("agg.shard")


SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq         INTEGER PRIMARY KEY,
    topic       TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    timestamp   TEXT NOT NULL,
    source      TEXT NOT NULL,
    payload     BLOB NOT NULL,
    received_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_topic_seq ON events (topic, seq);
CREATE TABLE IF NOT EXISTS counters (
    topic             TEXT PRIMARY KEY,
    received          INTEGER NOT NULL,
    unique_processed  INTEGER NOT NULL,
    duplicate_dropped INTEGER NOT NULL
) WITHOUT ROWID;
"""

INSERT = ("INSERT INTO events (topic, event_id, timestamp, source, payload, received_at)"
          " VALUES (?, ?, ?, ?, ?, ?)")
# Rows per INSERT statement in a group: one statement of many rows costs 20-30% less
# per row than as many steps of executemany (measured). The group's received_at is
# bound once, as ?1. 100 rows are 501 values, within SQLite's oldest limit (999).
ROWS_PER_INSERT = 100
INSERT_MANY = ("INSERT INTO events (topic, event_id, timestamp, source, payload, received_at) VALUES "
               + ", ".join(f"(?{2 + 5 * i}, ?{3 + 5 * i}, ?{4 + 5 * i}, ?{5 + 5 * i}, ?{6 + 5 * i}, ?1)"
                           for i in range(ROWS_PER_INSERT)))
KEYS_AFTER = "SELECT topic, event_id, seq FROM events WHERE seq > ? ORDER BY seq"
KEY_AT = "SELECT topic, event_id FROM events WHERE seq = ?"
# A start that reads this many rows into a key index says so in the log.
LOG_ROWS = 200_000
# Rows fetched per query when the index's hits are checked (SQLite's old limit is 999).
KEYS_PER_QUERY = 500
BUMP_COUNTERS = (
    "INSERT INTO counters (topic, received, unique_processed, duplicate_dropped) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (topic) DO UPDATE SET received = received + excluded.received,"
    " unique_processed = unique_processed + excluded.unique_processed,"
    " duplicate_dropped = duplicate_dropped + excluded.duplicate_dropped")
PAGE = ("SELECT seq, topic, event_id, timestamp, source, payload, received_at FROM events"
        " WHERE seq > ? ORDER BY seq LIMIT ?")
PAGE_OF_TOPIC = ("SELECT seq, topic, event_id, timestamp, source, payload, received_at FROM events"
                 " WHERE topic = ? AND seq > ? ORDER BY seq LIMIT ?")

# topic -> [received, unique_processed, duplicate_dropped]
TopicCounters = Dict[str, List[int]]
Row = Tuple[int, str, str, str, str, bytes, str]


class Shard:
    """The SQLite file of one partition, opened by its owning worker."""

    def __init__(self, path: str, synchronous: str = "FULL", cache_mib: int = 64,
                 wal_autocheckpoint: int = 16000, index_save_rows: int = 100_000,
                 progress: Callable[[], None] = lambda: None,
                 background: Optional[Callable[[Callable[[], None]], None]] = None) -> None:
        self.path = path
        self.background = background  # runs a job on the worker's background thread
        self.progress = progress  # called now and then while a long key index rebuild runs
        self.index_path = path + ".keys"
        self.index_save_rows = index_save_rows
        lock = lifecycle.hold_lock(path + ".lock")
        if lock is None:
            raise sqlite3.DatabaseError("in use by another process (two workers given this partition?)")
        self.lock = lock
        # isolation_level=None: we issue BEGIN/COMMIT ourselves (see transaction()).
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # WAL must be set outside a transaction; it persists in the file.
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={synchronous}")
        self.db.execute(f"PRAGMA cache_size=-{cache_mib * 1024}")
        self.db.execute("PRAGMA temp_store=MEMORY")
        # The worker's background thread copies the WAL back, off the commit path; a
        # checkpoint by a commit is the backstop (100-300 ms at 16000 pages if it had
        # to copy it all, quick when the thread has copied nearly everything).
        self.db.execute(f"PRAGMA wal_autocheckpoint={wal_autocheckpoint}")
        with self.transaction():
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    self.db.execute(statement)
        self.load()

    def load(self) -> None:
        """Read what the shard keeps in memory from the file: its last row, its
        counters, and its key index."""
        last = self.db.execute("SELECT seq, received_at, topic, event_id FROM events"
                               " ORDER BY seq DESC LIMIT 1").fetchone()
        self.last_seq: int = last[0] if last else 0
        self.last_received_at: str = last[1] if last else ""
        self.last_key: int = key_hash(last[2], last[3]) if last else 0  # of the row at last_seq
        self.counters: TopicCounters = {
            topic: [r, u, d]
            for topic, r, u, d in self.db.execute("SELECT * FROM counters")}
        self.index, self.last_save_at = self.open_index()  # seq of the last save (or try)

    def open_index(self) -> Tuple[KeyIndex, int]:
        """The key index and the seq its file covers: the file, if it matches
        this shard, plus the rows after it; else every row."""
        covered = 0
        loaded = KeyIndex.load(self.index_path)
        if loaded is not None:
            index, covered, covered_key = loaded
            row = self.db.execute(KEY_AT, (covered,)).fetchone()
            if not (covered <= self.last_seq and (key_hash(*row) if row else 0) == covered_key):
                log.warning("%s does not match its shard; rebuilding the key index", self.index_path)
                loaded = None
        if loaded is None:
            index, covered = KeyIndex(), 0
        if self.last_seq - covered >= LOG_ROWS:
            log.info("%s: reading %d rows into the key index (about %.0f s)", self.path,
                     self.last_seq - covered, (self.last_seq - covered) * 3.5e-6)
        index.bulk_load(self.db.execute(KEYS_AFTER, (covered,)), lambda _count: self.progress())
        return index, covered

    def save_index(self, now: bool = False) -> None:
        """Write the key index's file, so that a restart reads the rows after
        this point only: on the background thread if the shard has one (at 10M
        events a save writes 15 MB and fsyncs, too long to hold a group's
        answers), else, or if ``now``, here. A failure costs only a longer next
        start."""
        snapshot, covered, covered_key, path = self.index.snapshot(), self.last_seq, self.last_key, self.index_path

        def save() -> None:
            try:
                keyindex.write(path, snapshot, covered, covered_key)
            except OSError as exc:
                log.warning("cannot save the key index %s: %s", path, exc)
        if self.background is None or now:
            save()
        else:
            self.background(save)
        # After a failure too: the next try comes after as many rows, not at every commit.
        self.last_save_at = self.last_seq

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

    def stored_keys(self, seqs: Iterable[int]) -> Dict[int, Tuple[str, str]]:
        """seq -> (topic, event_id) of the given rows."""
        wanted = list(seqs)
        keys: Dict[int, Tuple[str, str]] = {}
        for start in range(0, len(wanted), KEYS_PER_QUERY):
            chunk = wanted[start:start + KEYS_PER_QUERY]
            query = f"SELECT seq, topic, event_id FROM events WHERE seq IN ({','.join('?' * len(chunk))})"
            for seq, topic, event_id in self.db.execute(query, chunk):
                keys[seq] = (topic, event_id)
        return keys

    def store(self, events: Sequence[Sequence[Any]], received_at: str) -> bytearray:
        """Insert the new ones of ``events`` (at least one), each ``(topic,
        event_id, timestamp, source, payload)``, in one transaction, stamped
        ``received_at``. Return per event 1 (``protocol.STORED``) if it is new, 0
        if it duplicates one stored before or earlier in ``events``.

        Written for groups of thousands: per event, one comprehension hashes
        the key, and the rest (set and array lookups, counting, the insert) runs
        in C. Python looks only at the events the index may know and at hashes
        that repeat within the group."""
        count = len(events)
        hashes = key_hashes(events)
        hits = self.index.candidates(hashes)
        wanted = hashes.tolist()
        look = set(hits)
        if len(set(wanted)) < count:  # a key sent twice in the group (or a collision in it)
            repeats = {h for h, n in collections.Counter(wanted).items() if n > 1}
            look.update(i for i, h in enumerate(wanted) if h in repeats)
        statuses = bytearray(b"\x01") * count
        collided: Set[int] = set()  # positions of new keys whose hash is taken
        if look:
            stored = self.stored_keys(seq for seqs in hits.values() for seq in seqs)
            in_group: Dict[int, List[Tuple[str, str]]] = {}  # hash -> new keys of this group
            for i in sorted(look):
                key = (events[i][0], events[i][1])
                seqs, earlier = hits.get(i), in_group.get(wanted[i])
                if (seqs is not None and any(stored.get(s) == key for s in seqs)) \
                        or (earlier is not None and key in earlier):
                    statuses[i] = 0
                    continue
                if seqs is not None or earlier is not None:
                    collided.add(i)
                in_group.setdefault(wanted[i], []).append(key)
        new = events if len(statuses) == sum(statuses) else list(itertools.compress(events, statuses))
        first = self.last_seq + 1
        bumps = {topic: [n, n, 0] for topic, n in collections.Counter(e[0] for e in events).items()}
        for i in (i for i in look if not statuses[i]):
            bump = bumps[events[i][0]]
            bump[1] -= 1
            bump[2] += 1
        try:
            with self.transaction() as db:
                if new:
                    self.insert(new, received_at)
                    # Rows are appended at max(seq) + 1: a seq other than ours means the file
                    # has rows this shard did not write (a commit reported failed that reached
                    # the disk, another writer). The file is the truth: the group fails, the
                    # shard reads the file again, and the group's resend meets the rows.
                    last = db.execute("SELECT last_insert_rowid()").fetchone()[0]
                    if last != first + len(new) - 1:
                        raise sqlite3.IntegrityError(f"rows were appended at {last}, not at "
                                                     f"{first + len(new) - 1}")
                db.executemany(BUMP_COUNTERS, [(t, r, u, d) for t, (r, u, d) in bumps.items()])
        except sqlite3.IntegrityError:
            log.error("%s has rows its key index did not know; reading it again", self.path)
            self.load()
            raise
        # Only now, after COMMIT, does the in-memory view move forward.
        new_hashes = wanted if new is events else list(itertools.compress(wanted, statuses))
        if collided:
            positions = list(itertools.compress(range(count), statuses))
            pairs = list(zip(new_hashes, range(first, first + len(new))))
            self.index.add([pair for i, pair in zip(positions, pairs) if i not in collided],
                           [pair for i, pair in zip(positions, pairs) if i in collided])
        else:
            self.index.add(zip(new_hashes, range(first, first + len(new))))
        if new:
            self.last_seq, self.last_key = first + len(new) - 1, new_hashes[-1]
            self.last_received_at = received_at
        for topic, (r, u, d) in bumps.items():
            mine = self.counters.get(topic)
            if mine is None:
                self.counters[topic] = [r, u, d]
            else:
                mine[0] += r
                mine[1] += u
                mine[2] += d
        if self.last_seq - self.last_save_at >= self.index_save_rows:
            self.save_index()
        return statuses

    def insert(self, rows: Sequence[Sequence[Any]], received_at: str) -> None:
        """Append ``rows`` (topic, event_id, timestamp, source, payload), each
        stamped ``received_at``, inside the current transaction."""
        full = len(rows) - len(rows) % ROWS_PER_INSERT
        chain = itertools.chain.from_iterable
        for start in range(0, full, ROWS_PER_INSERT):
            self.db.execute(INSERT_MANY, [received_at, *chain(rows[start:start + ROWS_PER_INSERT])])
        if full < len(rows):
            self.db.executemany(INSERT, [(*row, received_at) for row in rows[full:]])

    def idle(self) -> None:
        """Idle time: save the key index if many rows are not in its file."""
        if self.last_seq - self.last_save_at >= max(1, self.index_save_rows // 10):
            self.save_index()

    def page(self, after: int, limit: int, topic: Optional[str] = None) -> List[Row]:
        """Up to ``limit`` events with ``seq > after``, in processing order."""
        if topic is None:
            return self.db.execute(PAGE, (after, limit)).fetchall()
        return self.db.execute(PAGE_OF_TOPIC, (topic, after, limit)).fetchall()

    def totals(self) -> List[int]:
        r = u = d = 0
        for cr, cu, cd in self.counters.values():
            r += cr
            u += cu
            d += cd
        return [r, u, d]

    def close(self) -> None:
        """Close the file, saving the key index first if rows are not in it.
        A background thread given to this shard must be stopped before."""
        if self.last_seq > self.last_save_at:
            self.save_index(now=True)
        self.db.close()
        self.lock.close()
