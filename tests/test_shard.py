"""A shard's dedup, against a plain Python set, across groups, restarts and a
failed commit.

The shard's key index keeps 64-bit hashes and checks every hit against the
row, so two keys with the same hash must never make a new event a duplicate.
Real 64-bit collisions are too rare to meet in a test, so some tests swap in
a hash with a handful of values, and every key collides.
"""

from __future__ import annotations

import os
import random
import sqlite3
from typing import Iterator, List, Set, Tuple

import numpy as np
import pytest

from agg.protocol import Counts, Event
from agg.storage import ShardInUse, StorageError, indexfile, keyindex, schema
from agg.storage import shard as shardmod
from agg.storage.shard import Shard


def rows(keys: List[Tuple[str, str]]) -> List[Event]:
    return [Event(t, e, "2025-10-21T14:30:00Z", "src", b"{}") for t, e in keys]


def store(shard: Shard, keys: List[Tuple[str, str]]) -> List[bool]:
    """Per key, whether the shard stored it as new."""
    return [bool(status) for status in shard.store(rows(keys), "2026-01-01T00:00:00.000000Z")]


def check_against_set(shard: Shard, seen: Set[Tuple[str, str]], groups: List[List[Tuple[str, str]]]) -> None:
    """Store each group; its statuses must be exactly what a set says."""
    for group in groups:
        want = []
        for key in group:
            want.append(key not in seen)
            seen.add(key)
        assert store(shard, group) == want


def random_groups(rng: random.Random, count: int, size: int,
                  pool: List[Tuple[str, str]]) -> List[List[Tuple[str, str]]]:
    return [[rng.choice(pool) for _ in range(size)] for _ in range(count)]


def all_keys(path: str) -> List[Tuple[str, str]]:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT topic, event_id FROM events ORDER BY seq").fetchall()
    finally:
        db.close()


def crash(shard: Shard) -> None:
    """What a SIGKILL leaves: no index saved at close, and the lock dropped."""
    shard.db.close()
    shard.lock.close()


@pytest.fixture
def weak_hash(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every key hashes to one of 7 values; merges happen every 50 keys."""
    def weak(keys) -> np.ndarray:
        return np.array([sum(map(ord, key[0] + key[1])) % 7 - 3 for key in keys], dtype=np.int64)
    monkeypatch.setattr(shardmod, "key_hashes", weak)
    monkeypatch.setattr(keyindex, "key_hashes", weak)
    monkeypatch.setattr(keyindex, "RECENT_MAX", 50)
    yield


def test_new_and_duplicate_within_and_across_groups(tmp_path) -> None:
    shard = Shard(str(tmp_path / "s.sqlite3"))
    assert store(shard, [("a", "1"), ("a", "2"), ("a", "1"), ("b", "1")]) == [True, True, False, True]
    assert store(shard, [("b", "1"), ("a", "3"), ("a", "2")]) == [False, True, False]
    assert shard.counters == {"a": Counts(5, 3, 2), "b": Counts(2, 1, 1)}
    assert all_keys(shard.path) == [("a", "1"), ("a", "2"), ("b", "1"), ("a", "3")]
    shard.close()


@pytest.mark.parametrize("hashing", ["real", "weak"])
def test_dedup_matches_a_set_across_restarts(tmp_path, request, hashing) -> None:
    if hashing == "weak":
        request.getfixturevalue("weak_hash")
    rng = random.Random(7)
    pool = [(f"t{rng.randrange(5)}", f"e{rng.randrange(400)}") for _ in range(600)]
    path = str(tmp_path / "s.sqlite3")
    seen: Set[Tuple[str, str]] = set()
    shard = Shard(path, index_save_rows=90)  # saves its index file now and then
    check_against_set(shard, seen, random_groups(rng, 12, 40, pool))
    shard.close()  # saves the index: the next open reads no rows
    shard = Shard(path, index_save_rows=90)
    check_against_set(shard, seen, random_groups(rng, 12, 40, pool))
    crash(shard)  # the index file is behind the shard: the rows after it are read
    shard = Shard(path, index_save_rows=10**6)
    assert shard.index_file.saved_at < shard.last_seq
    check_against_set(shard, seen, random_groups(rng, 12, 40, pool))
    shard.close()
    stored = all_keys(path)
    assert len(stored) == len(set(stored)) == len(seen)


@pytest.mark.parametrize("damage", ["missing", "torn", "flipped", "other shard", "ahead"])
def test_index_file_that_does_not_fit_is_rebuilt(tmp_path, damage) -> None:
    path = str(tmp_path / "s.sqlite3")
    keys = [("t", f"e{i}") for i in range(300)]
    shard = Shard(path)
    store(shard, keys)
    shard.close()
    if damage == "missing":
        os.unlink(path + ".keys")
    elif damage == "torn":
        with open(path + ".keys", "r+b") as fh:
            fh.truncate(os.path.getsize(path + ".keys") - 8)
    elif damage == "flipped":
        with open(path + ".keys", "r+b") as fh:
            fh.seek(-5, os.SEEK_END)
            byte = fh.read(1)
            fh.seek(-5, os.SEEK_END)
            fh.write(bytes([byte[0] ^ 0x40]))
    elif damage == "other shard":
        # An index of different keys, covering as many rows: its covered row does not match.
        other = Shard(str(tmp_path / "o.sqlite3"))
        store(other, [("u", f"x{i}") for i in range(300)])
        other.close()
        os.replace(str(tmp_path / "o.sqlite3.keys"), path + ".keys")
    elif damage == "ahead":
        # The shard restored from an older copy: the index covers rows it does not have.
        bigger = Shard(str(tmp_path / "o.sqlite3"))
        store(bigger, keys + [("t", "later")])
        bigger.close()
        os.replace(str(tmp_path / "o.sqlite3.keys"), path + ".keys")
    shard = Shard(path)
    assert len(shard.index) == 300
    assert store(shard, keys[:5] + [("t", "new"), ("t", "later")]) == [False] * 5 + [True, True]
    shard.close()


def test_a_failed_commit_leaves_the_index_as_it_was(tmp_path) -> None:
    shard = Shard(str(tmp_path / "s.sqlite3"))
    store(shard, [("t", "1")])
    shard.db.execute("PRAGMA query_only=1")
    with pytest.raises(StorageError):
        store(shard, [("t", "2"), ("t", "3")])
    shard.db.execute("PRAGMA query_only=0")
    assert store(shard, [("t", "2"), ("t", "3"), ("t", "1")]) == [True, True, False]
    assert shard.counters == {"t": Counts(4, 3, 1)}
    shard.close()


def test_a_shard_with_the_old_unique_index_keeps_working(tmp_path) -> None:
    path = str(tmp_path / "s.sqlite3")
    db = sqlite3.connect(path)
    db.executescript(schema.SCHEMA + "CREATE UNIQUE INDEX events_key ON events (topic, event_id);")
    db.execute("INSERT INTO events (topic, event_id, timestamp, source, payload, received_at)"
               " VALUES ('t', 'old', 'ts', 's', x'7b7d', 'r')")
    db.execute("INSERT INTO counters VALUES ('t', 1, 1, 0)")
    db.commit()
    db.close()
    shard = Shard(path)
    assert store(shard, [("t", "old"), ("t", "new")]) == [False, True]
    assert shard.counters == {"t": Counts(3, 2, 1)}
    shard.close()


def test_an_index_file_that_cannot_be_written_costs_only_a_warning(tmp_path, caplog) -> None:
    path = str(tmp_path / "s.sqlite3")
    shard = Shard(path, index_save_rows=10)
    shard.index_file.path = str(tmp_path / "no such dir" / "s.sqlite3.keys")
    with caplog.at_level("WARNING", logger="agg.storage"):
        assert store(shard, [("t", f"e{i}") for i in range(10)]) == [True] * 10
        assert store(shard, [("t", "e1"), ("t", "e10")]) == [False, True]
    # One attempt, not one per commit: the next comes after another 10 rows.
    assert len([r for r in caplog.records if "cannot save" in r.getMessage()]) == 1
    crash(shard)
    shard = Shard(path)  # no file: the index is rebuilt from the rows
    assert store(shard, [("t", "e3"), ("t", "e11")]) == [False, True]
    shard.close()


def test_index_seqs_widen_past_four_bytes_and_survive_the_file(tmp_path) -> None:
    index = keyindex.KeyIndex()
    index.add([(5, 7), (-9, 2**32 - 1)])
    index.merge()
    assert index.seqs.dtype.itemsize == 4
    index.add([(11, 2**32 + 5)], collided=[(5, 2**40)])
    index.merge()
    assert index.seqs.dtype.itemsize == 8
    path = str(tmp_path / "k")
    indexfile.write(path, index.snapshot(), 2**40, 123)
    loaded, covered, covered_key = indexfile.read(path)
    assert (covered, covered_key) == (2**40, 123)
    assert loaded.candidates(np.array([5, -9, 11, 6])) == {0: [7, 2**40], 1: [2**32 - 1], 2: [2**32 + 5]}


def test_a_second_opener_of_a_shard_is_refused(tmp_path) -> None:
    path = str(tmp_path / "s.sqlite3")
    first = Shard(path)
    with pytest.raises(ShardInUse, match="in use by another process"):
        Shard(path)
    first.close()
    Shard(path).close()  # free again once the first has closed it


def test_rows_written_behind_the_shard_make_it_read_the_file_again(tmp_path) -> None:
    path = str(tmp_path / "s.sqlite3")
    shard = Shard(path)
    store(shard, [("t", "1")])
    # A commit that reached the disk although SQLite reported it failed looks like this.
    other = sqlite3.connect(path)
    other.execute("INSERT INTO events VALUES (2, 't', 'ghost', 'ts', 's', x'7b7d', 'r')")
    other.execute("UPDATE counters SET received = 2, unique_processed = 2")
    other.commit()
    other.close()
    with pytest.raises(StorageError):
        store(shard, [("t", "3")])
    assert store(shard, [("t", "ghost"), ("t", "3")]) == [False, True]
    assert shard.counters == {"t": Counts(4, 3, 1)}
    shard.close()
