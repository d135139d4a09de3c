"""A worker's background checkpointer: copies its shards' WALs back into
their database files on a thread of its own, off the commit path.

Why: a checkpoint run by a commit (SQLite's ``wal_autocheckpoint``) holds that
commit's group, and every answer in it, for as long as it copies the WAL: at
16000 pages, 100-300 ms, which was most of the p99 latency at half load. On
its own connection and thread a PASSIVE checkpoint never blocks the writer
(SQLite lets a writer append to the WAL while it is copied), and sqlite3
releases the GIL for it, so the worker keeps committing meanwhile.

Each round checkpoints the shards that committed since the previous one, so
that the WAL holds a fraction of a second of commits and SQLite can start it
over from the top at the next commit. The shards keep ``wal_autocheckpoint``
as a backstop, should this thread fall behind.

A failed checkpoint is logged once (and once more when checkpoints work
again); it costs only a larger WAL, never an acknowledged event.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from typing import Dict, Optional, Sequence

log = logging.getLogger("agg.checkpointer")

# Seconds between two rounds: the WAL holds about this much of the commits.
INTERVAL_S = 0.2


class Checkpointer(threading.Thread):
    """Checkpoints the shard files ``paths`` every ``INTERVAL_S`` while they
    are written; ``mark(path)`` says a commit happened."""

    def __init__(self, paths: Sequence[str], synchronous: str = "FULL") -> None:
        super().__init__(name="checkpointer", daemon=True)
        self.paths = list(paths)
        self.synchronous = synchronous
        self.written: Dict[str, bool] = dict.fromkeys(self.paths, False)
        self.stopping = threading.Event()
        self.failing: Optional[str] = None
        self.done = 0  # checkpoints that succeeded: what a test waits on

    def mark(self, path: str) -> None:
        """Called by the worker's thread after a commit to ``path``."""
        self.written[path] = True

    def run(self) -> None:
        connections: Dict[str, sqlite3.Connection] = {}
        try:
            while not self.stopping.wait(INTERVAL_S):
                for path in self.paths:
                    if not self.written[path]:
                        continue
                    self.written[path] = False  # a commit after this is seen next round
                    self.checkpoint(connections, path)
        finally:
            for db in connections.values():
                db.close()

    def checkpoint(self, connections: Dict[str, sqlite3.Connection], path: str) -> None:
        try:
            db = connections.get(path)
            if db is None:
                db = connections[path] = sqlite3.connect(path, isolation_level=None)
                db.execute(f"PRAGMA synchronous={self.synchronous}")
            db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            if self.failing is None:
                log.warning("checkpoint of %s failed: %s (the WAL grows until one succeeds)", path, exc)
            self.failing = str(exc)
            return
        self.done += 1
        if self.failing is not None:
            log.info("checkpoints succeed again")
            self.failing = None

    def stop(self) -> None:
        self.stopping.set()
        if self.is_alive():
            self.join()
