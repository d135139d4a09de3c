"""The worker's background thread: it folds the WAL of a shard being written
back into the database file, so that the WAL stays short without a commit
ever having to checkpoint it, and it writes the key index files."""

from __future__ import annotations

import os
import sqlite3

from agg.protocol import Event
from agg.storage import indexfile
from agg.storage.background import Background
from agg.storage.shard import Shard
from conftest import wait_until


def group(start: int) -> list:
    return [Event("t", f"e{i}", "2025-10-21T14:30:00Z", "src", b'{"pad": "%s"}' % (b"x" * 200))
            for i in range(start, start + 1000)]


def test_the_wal_stays_short_while_commits_never_checkpoint(tmp_path) -> None:
    path = str(tmp_path / "s.sqlite3")
    shard = Shard(path, wal_autocheckpoint=0)  # no backstop: only the thread checkpoints
    background = Background([path])
    background.start()
    try:
        for n in range(20):
            before = background.done
            shard.store(group(n * 1000), "2026-01-01T00:00:00.000000Z")
            background.mark(path)
            wait_until(lambda before=before: background.done > before, message="a checkpoint after the commit")
        wal = os.path.getsize(path + "-wal")
        # 20,000 rows of ~250 bytes: ~5 MB written. The WAL restarts from its top after
        # each full checkpoint, so it holds about one group; the file holds them all.
        assert wal < 1_000_000, wal
        assert os.path.getsize(path) > 4_000_000
    finally:
        background.stop()
        shard.close()
    assert not background.is_alive()
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 20_000
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()


def test_a_failed_checkpoint_is_logged_once(tmp_path, caplog) -> None:
    missing = str(tmp_path / "no such dir" / "s.sqlite3")
    background = Background([missing])
    background.start()
    try:
        with caplog.at_level("WARNING", logger="agg.background"):
            for _ in range(3):
                background.mark(missing)
                wait_until(lambda: not background.written[missing], message="a round")
            wait_until(lambda: background.failing is not None, message="the failure")
    finally:
        background.stop()
    assert background.done == 0
    assert len([r for r in caplog.records if "checkpoint of" in r.getMessage()]) == 1


def test_key_index_saves_run_on_the_thread_and_finish_before_it_stops(tmp_path) -> None:
    path = str(tmp_path / "s.sqlite3")
    background = Background([path])  # not started yet: what a commit hands it waits
    shard = Shard(path, index_save_rows=1500, background=background.later)
    for n in range(4):  # saves handed over at 2000 and 4000 rows
        shard.store(group(n * 1000), "2026-01-01T00:00:00.000000Z")
    assert shard.index_file.saved_at == 4000 and len(background.jobs) == 2
    assert not os.path.exists(path + ".keys")  # nothing written on the commit path
    background.start()
    background.stop()  # runs the saves still queued
    assert indexfile.read(path + ".keys")[1] == 4000
    shard.store(group(4000), "2026-01-01T00:00:00.000000Z")
    shard.close()  # no thread now: the last rows are saved here
    index, covered, _key = indexfile.read(path + ".keys")
    assert covered == 5000 and len(index) == 5000
