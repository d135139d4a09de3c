"""A worker's background thread: the file work that must not hold a commit's
answers. It folds the shards' WALs back into their database files
(checkpoints), and writes the key index files the shards hand it.

Why: a checkpoint run by a commit (SQLite's ``wal_autocheckpoint``) held that
commit's group, and every answer in it, for as long as it copied the WAL: at
16000 pages, 100-300 ms, which was most of the p99 latency at half load. A key
index save at 10M events writes 15 MB and fsyncs. Here, a PASSIVE checkpoint
on a connection of its own never blocks the writer (SQLite lets a writer
append to the WAL while it is copied), and sqlite3 and file writes release the
GIL, so the worker keeps committing meanwhile.

Each round (every ``INTERVAL_S``) runs the jobs handed in, in order, then
checkpoints the shards that committed since the previous round, so that at
most a fraction of a second of commits waits to be copied. SQLite starts the
WAL over from the top only when a writer begins with every frame copied:
between groups it does, but under steady writes the WAL file can grow until
the shards' ``wal_autocheckpoint`` (the backstop) runs, which then finds
nearly everything copied already and is quick (traced: 5-18 ms per round's
checkpoint at 65k events/s).

A failed checkpoint is logged once (and once more when checkpoints work
again); it costs only a larger WAL, never an acknowledged event.
"""

from __future__ import annotations

import collections
import logging
import sqlite3
import threading
from typing import Callable, Deque, Dict, Optional, Sequence

from .shard import sqlite_synchronous

log = logging.getLogger("agg.background")

# Seconds between two rounds: the WAL holds about this much of the commits.
INTERVAL_S = 0.2


class Background(threading.Thread):
    """Checkpoints the shard files ``paths`` while they are written (``mark``),
    and runs the jobs handed to ``later``."""

    def __init__(self, paths: Sequence[str], synchronous: str = "GROUP") -> None:
        super().__init__(name="background", daemon=True)
        self.paths = list(paths)
        self.synchronous = synchronous
        self.written: Dict[str, bool] = dict.fromkeys(self.paths, False)
        self.jobs: Deque[Callable[[], None]] = collections.deque()
        self.stopping = threading.Event()
        self.failing: Optional[str] = None
        self.done = 0  # checkpoints that succeeded: what a test waits on

    def mark(self, path: str) -> None:
        """Called by the worker's thread after a commit to ``path``."""
        self.written[path] = True

    def later(self, job: Callable[[], None]) -> None:
        """Run ``job`` at the next round (jobs run one at a time, in order)."""
        self.jobs.append(job)

    def run(self) -> None:
        connections: Dict[str, sqlite3.Connection] = {}
        try:
            while not self.stopping.wait(INTERVAL_S):
                self.run_jobs()
                for path in self.paths:
                    if not self.written[path]:
                        continue
                    self.written[path] = False  # a commit after this is seen next round
                    self.checkpoint(connections, path)
        finally:
            self.run_jobs()  # a save handed in before the stop still happens
            for db in connections.values():
                db.close()

    def run_jobs(self) -> None:
        while self.jobs:
            job = self.jobs.popleft()
            try:
                job()
            except Exception:  # a bug in one job must not end the checkpoints
                log.exception("background job failed")

    def checkpoint(self, connections: Dict[str, sqlite3.Connection], path: str) -> None:
        try:
            db = connections.get(path)
            if db is None:
                db = connections[path] = sqlite3.connect(path, isolation_level=None)
                db.execute(f"PRAGMA synchronous={sqlite_synchronous(self.synchronous)}")
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
        """Stop after the jobs handed in so far."""
        self.stopping.set()
        if self.is_alive():
            self.join()
