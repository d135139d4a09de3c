"""One partition's SQLite file: its events, its dedup key and its counters.

Only the worker that owns the partition opens its shard, so a shard has a
single writer and no lock contention. ``store`` is the group commit: one
transaction inserts a group of events, learns which were new, and adds to the
per-topic counters, so that events and counters are never out of step, even
after a SIGKILL in the middle (SQLite's journal rolls back the partial
transaction at the next open).

Processing order is ``seq``, the rowid: it only grows, because rows are
never deleted, so ``seq > before`` after an insert is exactly the set of rows
that insert added.
"""

from __future__ import annotations

import contextlib
import sqlite3
from typing import Dict, Iterator, List, Optional, Sequence, Tuple


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
CREATE UNIQUE INDEX IF NOT EXISTS events_key ON events (topic, event_id);
CREATE INDEX IF NOT EXISTS events_topic_seq ON events (topic, seq);
CREATE TABLE IF NOT EXISTS counters (
    topic             TEXT PRIMARY KEY,
    received          INTEGER NOT NULL,
    unique_processed  INTEGER NOT NULL,
    duplicate_dropped INTEGER NOT NULL
) WITHOUT ROWID;
"""

INSERT = ("INSERT OR IGNORE INTO events (topic, event_id, timestamp, source, payload, received_at)"
          " VALUES (?, ?, ?, ?, ?, ?)")
ADDED_SINCE = "SELECT topic, event_id FROM events WHERE seq > ?"
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
# A row to insert: topic, event_id, timestamp, source, payload, received_at.
NewRow = Tuple[str, str, str, str, bytes, str]


class Shard:
    """The SQLite file of one partition, opened by its owning worker."""

    def __init__(self, path: str, synchronous: str = "FULL", cache_mib: int = 64,
                 wal_autocheckpoint: int = 16000) -> None:
        self.path = path
        # isolation_level=None: we issue BEGIN/COMMIT ourselves (see transaction()).
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # WAL must be set outside a transaction; it persists in the file.
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={synchronous}")
        self.db.execute(f"PRAGMA cache_size=-{cache_mib * 1024}")
        self.db.execute("PRAGMA temp_store=MEMORY")
        # Random event ids dirty about one index page per insert, and a page dirtied
        # again before the next checkpoint is copied to the file once: a WAL of 16000
        # pages made the shard ~50% faster than SQLite's 1000 (agg-bench, README),
        # while a checkpoint on the commit path still takes ~0.1 s, well inside
        # limits.stall_s. An idle worker checkpoints at once (checkpoint()).
        self.db.execute(f"PRAGMA wal_autocheckpoint={wal_autocheckpoint}")
        self.unchecked = False
        with self.transaction():
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    self.db.execute(statement)
        last = self.db.execute("SELECT seq, received_at FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        self.last_seq: int = last[0] if last else 0
        self.last_received_at: str = last[1] if last else ""
        self.counters: TopicCounters = {
            topic: [r, u, d]
            for topic, r, u, d in self.db.execute("SELECT * FROM counters")}

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

    def store(self, rows: Sequence[NewRow]) -> List[bool]:
        """Insert ``rows`` (at least one) in one transaction; return, per row, True
        if it is new and False if it duplicates one stored before (or earlier in
        ``rows``)."""
        before = self.last_seq
        with self.transaction() as db:
            db.executemany(INSERT, rows)
            added = set(db.execute(ADDED_SINCE, (before,)))
            statuses: List[bool] = []
            bumps: TopicCounters = {}
            for row in rows:
                key = (row[0], row[1])
                new = key in added
                if new:
                    added.discard(key)  # a second copy in the same group is a duplicate
                statuses.append(new)
                bump = bumps.get(key[0])
                if bump is None:
                    bump = bumps[key[0]] = [0, 0, 0]
                bump[0] += 1
                bump[1 if new else 2] += 1
            db.executemany(BUMP_COUNTERS, [(t, r, u, d) for t, (r, u, d) in bumps.items()])
            last = db.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
        # Only now, after COMMIT, does the in-memory view move forward.
        self.unchecked = True
        self.last_seq = last
        self.last_received_at = rows[-1][5]
        for topic, (r, u, d) in bumps.items():
            mine = self.counters.get(topic)
            if mine is None:
                self.counters[topic] = [r, u, d]
            else:
                mine[0] += r
                mine[1] += u
                mine[2] += d
        return statuses

    def checkpoint(self) -> None:
        """Fold the WAL back into the database file, if anything was written since."""
        if self.unchecked:
            self.db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            self.unchecked = False

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
        self.db.close()
