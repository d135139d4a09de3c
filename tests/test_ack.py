"""An acknowledgement means "committed", and dedup holds end to end through
the key index's corners: a commit that fails is never acknowledged, keys
whose hashes collide stay apart, the rows written after the index's file are
read back at a start, and a key is the same key on either path.

Failures here are made deterministic, not left to where a kill lands: an
SQLite trigger put into a shard by the test refuses some inserts, and a
``sitecustomize`` on the spawned agg's PYTHONPATH makes every key hash alike."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import textwrap
from typing import Any, List, Optional, Set, Tuple

import msgpack

from agg import protocol
from agg.partition import partition_of, shard_path
from agg.storage import indexfile
from conftest import AggSystem, RawClient, hook_env, make_event, topic_in, wait_until

POISON = ("CREATE TRIGGER poison BEFORE INSERT ON events WHEN NEW.event_id GLOB 'poison*'"
          " BEGIN SELECT RAISE(ABORT, 'refused by the test'); END")


def batch_frames(req_id: int, events: list) -> List[bytes]:
    return [protocol.VERSION, protocol.BATCH, msgpack.packb([req_id, events])]


def native(raw: RawClient, req_id: int, events: list) -> Tuple[bytes, Any]:
    """(kind, body) of the answer to a BATCH of ``events``, resent as a publisher
    would while the ingest is not connected to a worker yet (just after a start
    or a worker's restart: ERR unavailable, nothing acknowledged)."""
    def answered() -> Optional[Tuple[bytes, Any]]:
        answer = raw.ask(batch_frames(req_id, events), timeout=30)
        assert answer is not None, "no answer"
        kind, body = answer
        if kind == protocol.ERR and body[1] == protocol.ERR_UNAVAILABLE and "connected" in body[2]:
            return None
        return answer
    return wait_until(answered, 30, message="the ingest connected to the worker")


def shard_rows(system: AggSystem, partition: int) -> Tuple[Set[Tuple[str, str]], dict]:
    """(keys stored, counters per topic) read from the shard file itself."""
    db = sqlite3.connect(f"file:{shard_path(system.data_dir, partition)}?mode=ro", uri=True, timeout=30)
    try:
        keys = set(db.execute("SELECT topic, event_id FROM events"))
        counters = {t: (r, u, d) for t, r, u, d in db.execute("SELECT * FROM counters")}
    finally:
        db.close()
    return keys, counters


def alter_shard(system: AggSystem, partition: int, statement: str) -> None:
    db = sqlite3.connect(shard_path(system.data_dir, partition), timeout=30, isolation_level=None)
    try:
        db.execute(statement)
    finally:
        db.close()


def test_a_commit_that_fails_is_never_acknowledged_nor_counted(agg: AggSystem) -> None:
    """A trigger refuses the insert of events named poison-*: the commit of
    their group fails. No OK comes back on either path (HTTP 503 with
    Retry-After, natively ERR unavailable), nothing of the request is stored
    or counted, and once the trigger is gone the resend is stored once."""
    topic = topic_in(3)
    p = partition_of(topic, 8)
    first = [make_event(topic=topic, event_id=f"ok-{i}") for i in range(5)]
    assert agg.post("/publish", {"events": first})[0] == 200
    agg.wait_stats(5, 5, 0)
    alter_shard(agg, p, POISON)
    before = shard_rows(agg, p)

    # Valid events beside the poisoned one, and a repeat of a stored one: all in one commit.
    batch = [make_event(topic=topic, event_id=f"new-{i}") for i in range(50)]
    batch += [make_event(topic=topic, event_id="poison-1"), make_event(topic=topic, event_id="ok-0")]
    status, headers, body = agg.post("/publish", {"events": batch})
    assert status == 503, (status, body)
    assert headers["retry-after"] == "1" and "refused by the test" in body["description"], body
    raw = RawClient(agg.ingest)
    try:
        kind, answer = native(raw, 9, batch)
        assert kind == protocol.ERR, (kind, answer)
        req_id, code, reason, _errors = answer
        assert (req_id, code) == (9, protocol.ERR_UNAVAILABLE) and "refused by the test" in reason
    finally:
        raw.close()
    assert shard_rows(agg, p) == before
    assert before[1] == {topic: (5, 5, 0)}
    stats = agg.stats()
    assert (stats["received"], stats["unique_processed"], stats["duplicate_dropped"]) == (5, 5, 0)

    alter_shard(agg, p, "DROP TRIGGER poison")
    status, _, body = wait_until(lambda: (lambda r: r if r[0] == 200 else None)(
        agg.post("/publish", {"events": batch})), 30, message="the resend stored")
    assert (body["stored"], body["duplicates"]) == (51, 1), body
    keys, counters = shard_rows(agg, p)
    assert keys == {(topic, e["event_id"]) for e in first + batch}
    assert counters == {topic: (5 + 52, 56, 1)}
    agg.wait_stats(57, 56, 1)


COLLIDE = textwrap.dedent("""\
    # Test hook, loaded by every process of this agg: every key hashes alike.
    import sys

    import numpy as np

    import agg.storage.keyindex as keyindex
    import agg.storage.shard as shard


    def key_hashes(keys):
        return np.full(sum(1 for _ in keys), 7, dtype="<i8")


    keyindex.key_hashes = shard.key_hashes = key_hashes
    sys.stderr.write("test hook: every key hashes alike\\n")
""")


def test_keys_whose_hashes_collide_stay_apart_end_to_end(agg_factory, tmp_base) -> None:
    """With a key hash that is one constant, the index hits on every key: only
    the comparison of the keys behind the hits tells a new event from a
    duplicate. Over HTTP and natively, before and after a restart (the index
    read back from its file, and rebuilt from the rows)."""
    env = hook_env(tmp_base, COLLIDE)
    system: AggSystem = agg_factory(env=env, storage_index_save_rows=50)
    topic = topic_in(0)
    events = [make_event(topic=topic, event_id=f"c-{i}") for i in range(120)]
    status, _, body = system.post("/publish", {"events": events[:60] + events[:10]})
    assert status == 200 and (body["stored"], body["duplicates"]) == (60, 10), body
    raw = RawClient(system.ingest)
    try:
        kind, (_id, statuses) = native(raw, 1, events[50:])
        assert kind == protocol.OK and list(statuses) == [0] * 10 + [1] * 60
    finally:
        raw.close()
    system.wait_stats(140, 120, 20)
    assert "rows its key index did not know" not in system.log_text()
    assert "every key hashes alike" in system.log_text(), "the hook was not loaded"
    system.stop()

    # Again with the index read from its file, then rebuilt from the rows.
    system = agg_factory(env=env)
    more = events + [make_event(topic=topic, event_id="c-new")]
    status, _, body = system.post("/publish", {"events": more})
    assert status == 200 and (body["stored"], body["duplicates"]) == (1, 120), body
    system.wait_stats(261, 121, 140)
    system.stop()
    os.unlink(shard_path(system.data_dir, 0) + ".keys")
    system = agg_factory(env=env)
    more.append(make_event(topic=topic, event_id="c-new2"))
    status, _, body = system.post("/publish", {"events": more})
    assert status == 200 and (body["stored"], body["duplicates"]) == (1, 121), body
    stored = [(e["topic"], e["event_id"]) for e in system.get(f"/events?topic={topic}")[2]["events"]]
    assert len(stored) == len(set(stored)) == 122
    system.wait_stats(383, 122, 261)


def test_rows_written_after_the_index_file_are_read_at_start(agg_factory) -> None:
    """The key index's file covers the first 1,000 rows; 95 more are committed
    (fewer than the tenth of storage.index_save_rows that an idle worker
    saves at) and the worker is killed with SIGKILL, so the file never covers
    them. Its replacement must read those rows from the shard: their resend
    is all duplicates, over HTTP and natively, and nothing is stored twice."""
    system: AggSystem = agg_factory(storage_index_save_rows=1000)
    topic = topic_in(2)
    p = partition_of(topic, 8)
    keys_file = shard_path(system.data_dir, p) + ".keys"
    first = [make_event(topic=topic, event_id=f"a-{i}") for i in range(1000)]
    assert system.post("/publish", {"events": first})[0] == 200
    wait_until(lambda: (indexfile.read(keys_file) or (None, 0))[1] == 1000, 30, message="the index file saved")
    second = [make_event(topic=topic, event_id=f"b-{i}") for i in range(95)]
    status, _, body = system.post("/publish", {"events": second})
    assert status == 200 and body["stored"] == 95, body
    worker = f"worker.{p % 2}"
    victim = system.child_pid(worker)
    os.kill(victim, signal.SIGKILL)
    assert indexfile.read(keys_file)[1] == 1000
    wait_until(lambda: system.current_children().get(worker) not in (None, victim), 30,
               message=f"{worker} restarted")
    status, _, body = wait_until(lambda: (lambda r: r if r[0] == 200 else None)(
        system.post("/publish", {"events": second[:50]})), 30, message="publishing again")
    assert (body["stored"], body["duplicates"]) == (0, 50), body
    raw = RawClient(system.ingest)
    try:
        kind, (_id, statuses) = native(raw, 1, second[50:] + first[:5])
        assert kind == protocol.OK and list(statuses) == [0] * 50
    finally:
        raw.close()
    keys, counters = shard_rows(system, p)
    assert keys == {(topic, e["event_id"]) for e in first + second}
    assert counters == {topic: (1195, 1095, 100)}
    system.wait_stats(1195, 1095, 100)


def test_a_key_sent_over_http_is_a_duplicate_natively_and_back(agg: AggSystem) -> None:
    over_http = [make_event(topic=f"t{i % 5}", event_id=f"h-{i}") for i in range(20)]
    natively = [make_event(topic=f"t{i % 5}", event_id=f"n-{i}") for i in range(20)]
    assert agg.post("/publish", {"events": over_http})[2]["stored"] == 20
    raw = RawClient(agg.ingest)
    try:
        kind, (_id, statuses) = native(raw, 1, over_http + natively)
        assert kind == protocol.OK and list(statuses) == [0] * 20 + [1] * 20
    finally:
        raw.close()
    status, _, body = agg.post("/publish", {"events": natively})
    assert status == 200 and (body["stored"], body["duplicates"]) == (0, 20)
    stored = [(e["topic"], e["event_id"]) for e in agg.get("/events")[2]["events"]]
    assert sorted(stored) == sorted((e["topic"], e["event_id"]) for e in over_http + natively)
    agg.wait_stats(80, 40, 40)


def test_a_restart_with_another_worker_count_keeps_dedup_and_every_counter(agg_factory) -> None:
    """The worker count may change freely (the partitions stay): from 2 workers
    to 3 and then 1, every event stays deduplicated on both paths, and the
    totals and per-topic counters are the same as before each restart."""
    events = [make_event(topic=f"topic-{i % 7}", event_id=f"w-{i}") for i in range(700)]
    system: AggSystem = agg_factory(workers=2)
    assert system.post("/publish", {"events": events[:400] + events[:50]})[2]["stored"] == 400
    before = system.wait_stats(450, 400, 50)
    per_topic = before["topic_counts"]
    assert len(per_topic) == 7 and sum(c["duplicate_dropped"] for c in per_topic.values()) == 50
    system.stop()
    stored = 400
    for workers in (3, 1):
        system = agg_factory(workers=workers)
        after = system.wait_stats(before["received"], before["unique_processed"], before["duplicate_dropped"])
        assert after["topic_counts"] == before["topic_counts"], "per-topic counters changed over the restart"
        assert len(after["workers"]) == workers
        status, _, body = system.post("/publish", {"events": events[:200]})
        assert status == 200 and (body["stored"], body["duplicates"]) == (0, 200), body
        raw = RawClient(system.ingest)
        try:
            kind, (_id, statuses) = native(raw, 1, events[200:stored + 150])
        finally:
            raw.close()
        assert kind == protocol.OK
        old = stored - 200  # of these, the first ``old`` are stored already
        assert list(statuses) == [0] * old + [1] * (len(statuses) - old)
        listed = [(e["topic"], e["event_id"]) for e in system.get("/events?limit=10000")[2]["events"]]
        stored += 150
        assert len(listed) == len(set(listed)) == stored
        before = system.wait_stats(before["received"] + 200 + len(statuses), len(listed),
                                   before["duplicate_dropped"] + 200 + old)
        system.stop()


SYNCHRONOUS = textwrap.dedent("""\
    # Test hook: each shard connection, as opened, says its synchronous setting.
    import sys

    import agg.storage.shard as shard

    connect = shard.Shard._connect


    def _connect(self, *args):
        db = connect(self, *args)
        level = db.execute("PRAGMA synchronous").fetchone()[0]
        sys.stderr.write(f"test hook: {self.path} synchronous={level}\\\\n")
        return db


    shard.Shard._connect = _connect
""")


def test_shards_commit_with_the_configured_synchronous(agg_factory, tmp_base) -> None:
    """PRAGMA synchronous is a setting of each connection, not of the file, so
    it is read on the worker's own connections (a hook in every process). The
    default, GROUP, commits as NORMAL and flushes the WAL files before the
    answer (tests/test_durability.py); FULL has SQLite flush at each commit."""
    env = hook_env(tmp_base, SYNCHRONOUS)
    for settings, level in (({}, 1), ({"storage_synchronous": "FULL"}, 2)):
        system: AggSystem = agg_factory(env=env, **settings)
        with open(system.log_path) as fh:
            seen = dict(re.findall(r"test hook: (\S+) (synchronous=\d)", fh.read()))
        assert sorted(seen) == sorted(shard_path(system.data_dir, p) for p in range(8)), seen
        assert set(seen.values()) == {f"synchronous={level}"}, seen
        system.stop()
