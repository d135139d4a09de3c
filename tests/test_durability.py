"""An acknowledgement means the event is on the disk, not only in SQLite.

With ``storage.synchronous = "GROUP"`` a shard's COMMIT does not fsync; the
worker flushes the group's WAL files and only then answers. These tests make
that flush fail (an fsync of a WAL file gets EIO, through the sitecustomize in
tests/faults/fsync, as a failing disk would) and check that no OK leaves, and
that agg comes back and keeps each event once when the disk works again."""

from __future__ import annotations

import os
import sqlite3

from agg.partition import shard_path
from conftest import make_event, topic_in, wait_until

FAULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "faults", "fsync")


def faulty(tmp_base: str):
    marker = os.path.join(tmp_base, "fsync-fails")
    return marker, {"PYTHONPATH": FAULTS, "AGG_TEST_FSYNC_FAILS": marker}


def test_shards_commit_without_fsync_and_the_worker_flushes_by_default(agg) -> None:
    status, _, body = agg.post("/publish", make_event(topic_in(0), "e-1"))
    assert status == 200, body
    path = shard_path(agg.data_dir, 0)
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        # What the worker's connection set is not stored in the file; its config is.
    finally:
        db.close()
    # The worker holds the WAL file open to flush it (see agg.storage.flush).
    worker = agg.child_pid("worker.0")
    held = {os.readlink(f"/proc/{worker}/fd/{fd}") for fd in os.listdir(f"/proc/{worker}/fd")}
    assert os.path.realpath(path + "-wal") in held


def test_a_failed_flush_gives_no_ok_and_agg_recovers(agg_factory, tmp_base) -> None:
    marker, env = faulty(tmp_base)
    agg = agg_factory(env=env)
    topic = topic_in(0)
    status, _, body = agg.post("/publish", make_event(topic, "before"))
    assert status == 200 and body["stored"] == 1, body
    open(marker, "w").close()
    worker = agg.child_pid("worker.0")
    status, headers, body = agg.post("/publish", make_event(topic, "during"))
    # Committed in SQLite, but not known to be on the disk: it must not be acknowledged.
    assert status == 503, (status, body)
    assert "fdatasync" in body["description"] and "retry-after" in headers, body
    wait_until(lambda: "restarting this worker" in agg.log_text(), 10, message="the worker to say why it restarts")
    os.remove(marker)
    # The worker starts again, reads its shard from the file, and the resend is kept once.
    wait_until(lambda: agg.current_children().get("worker.0") not in (None, worker), 30,
               message="worker.0 restarted")
    status, _, body = wait_until(lambda: (lambda r: r if r[0] == 200 else None)(
        agg.post("/publish", make_event(topic, "during"))), 30, message="the resend acknowledged")
    assert body["stored"] + body["duplicates"] == 1, body
    status, _, page = agg.get(f"/events?topic={topic}")
    assert sorted(e["event_id"] for e in page["events"]) == ["before", "during"], page
