"""Partitions are a stable hash of the topic, fixed per data directory."""

import json
import os
import subprocess
import sys

import pytest

from agg.partition import (PartitionMismatch, ensure_data_dir, owner_of, partition_of,
                           partitions_of_worker)


def test_partition_is_crc32_of_the_topic() -> None:
    # The same on every machine and run (never Python's salted hash()): see the subprocess.
    import zlib
    for topic in ("user.created", "order.placed", "ünïcødé", "x" * 300):
        assert partition_of(topic, 16) == zlib.crc32(topic.encode()) % 16
    out = subprocess.run([sys.executable, "-c",
                          "from agg.partition import partition_of; print(partition_of('order.placed', 8))"],
                         capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "123"})
    assert int(out.stdout) == partition_of("order.placed", 8)


def test_every_partition_has_exactly_one_owner() -> None:
    owned = [p for w in range(3) for p in partitions_of_worker(w, 8, 3)]
    assert sorted(owned) == list(range(8))
    assert all(owner_of(p, 3) == p % 3 for p in range(8))


def test_partition_count_is_recorded_and_enforced(tmp_path) -> None:
    ensure_data_dir(str(tmp_path), 8)
    with open(tmp_path / "agg-meta.json") as fh:
        assert json.load(fh)["partitions"] == 8
    ensure_data_dir(str(tmp_path), 8)
    with pytest.raises(PartitionMismatch, match="created with 8 partitions"):
        ensure_data_dir(str(tmp_path), 4)


def test_processes_racing_to_create_the_data_dir_all_agree(tmp_path) -> None:
    import multiprocessing
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(8) as pool:
        metas = pool.starmap(ensure_data_dir, [(str(tmp_path / "d"), 8)] * 32)
    assert all(m["partitions"] == 8 for m in metas)
    assert sorted(os.listdir(tmp_path / "d")) == ["agg-meta.json"]  # no temporary file left


def test_agg_refuses_another_partition_count_in_one_line(agg_factory, tmp_base) -> None:
    first = agg_factory(partitions=4)
    assert first.stop() == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGG_")}
    out = subprocess.run([sys.executable, "-m", "agg", "run", "--data-dir", first.data_dir,
                          "--partitions", "8", "--http-port", "0"],
                         capture_output=True, text=True, env=env, timeout=30, cwd=tmp_base)
    assert out.returncode == 2
    assert "--partitions 4" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_partition_cache_agrees_and_stays_bounded() -> None:
    from agg.partition import PartitionCache, partition_of
    cache = PartitionCache(8, limit=10)
    topics = [f"topic-{i}" for i in range(25)] + ["ü", "topic-3"]
    assert [cache(t) for t in topics] == [partition_of(t, 8) for t in topics]
    assert len(cache.known) <= 10
