"""The worker's checkpointer thread: it folds the WAL of a shard being written
back into the database file, so that the WAL stays short without a commit
ever having to checkpoint it."""

from __future__ import annotations

import os
import sqlite3

from agg.checkpointer import Checkpointer
from agg.shard import Shard
from conftest import wait_until


def group(start: int) -> list:
    return [("t", f"e{i}", "2025-10-21T14:30:00Z", "src", b'{"pad": "%s"}' % (b"x" * 200))
            for i in range(start, start + 1000)]


def test_the_wal_stays_short_while_commits_never_checkpoint(tmp_path) -> None:
    path = str(tmp_path / "s.sqlite3")
    shard = Shard(path, wal_autocheckpoint=0)  # no backstop: only the thread checkpoints
    checkpointer = Checkpointer([path])
    checkpointer.start()
    try:
        for n in range(20):
            before = checkpointer.done
            shard.store(group(n * 1000), "2026-01-01T00:00:00.000000Z")
            checkpointer.mark(path)
            wait_until(lambda before=before: checkpointer.done > before, message="a checkpoint after the commit")
        wal = os.path.getsize(path + "-wal")
        # 20,000 rows of ~250 bytes: ~5 MB written. The WAL restarts from its top after
        # each full checkpoint, so it holds about one group; the file holds them all.
        assert wal < 1_000_000, wal
        assert os.path.getsize(path) > 4_000_000
    finally:
        checkpointer.stop()
        shard.close()
    assert not checkpointer.is_alive()
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 20_000
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()


def test_a_failed_checkpoint_is_logged_once(tmp_path, caplog) -> None:
    missing = str(tmp_path / "no such dir" / "s.sqlite3")
    checkpointer = Checkpointer([missing])
    checkpointer.start()
    try:
        with caplog.at_level("WARNING", logger="agg.checkpointer"):
            for _ in range(3):
                checkpointer.mark(missing)
                wait_until(lambda: not checkpointer.written[missing], message="a round")
            wait_until(lambda: checkpointer.failing is not None, message="the failure")
    finally:
        checkpointer.stop()
    assert checkpointer.done == 0
    assert len([r for r in caplog.records if "checkpoint of" in r.getMessage()]) == 1
