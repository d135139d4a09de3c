"""Stable partitioning of topics, and the partition count recorded in a data dir.

A topic's partition is ``crc32(topic as UTF-8) % partitions``: the same on
every machine, Python version and run (never Python's salted ``hash()``).
Partition ``p`` is owned by worker ``p % workers``, so the worker count may
change between runs; the partition count may not, because dedup looks for an
event only in its partition's shard. It is written to ``DATA_DIR/agg-meta.json``
when the directory is created, and a later start with another count is
refused.
"""

from __future__ import annotations

import json
import os
import zlib
from typing import Dict, List

META_FILE = "agg-meta.json"
META_FORMAT = 1


class PartitionMismatch(Exception):
    """The configured partition count differs from the data directory's."""


def partition_of(topic: str, partitions: int) -> int:
    return zlib.crc32(topic.encode("utf-8", "surrogatepass")) % partitions


class PartitionCache:
    """``partition_of`` with a memory of the topics seen: a dict lookup instead of
    encoding and hashing each event's topic. Past ``limit`` topics it forgets
    them all, so a flood of distinct topics cannot grow it."""

    def __init__(self, partitions: int, limit: int = 100_000) -> None:
        self.partitions = partitions
        self.limit = limit
        self.known: Dict[str, int] = {}

    def __call__(self, topic: str) -> int:
        p = self.known.get(topic)
        if p is None:
            if len(self.known) >= self.limit:
                self.known.clear()
            p = self.known[topic] = partition_of(topic, self.partitions)
        return p


def owner_of(partition: int, workers: int) -> int:
    return partition % workers


def partitions_of_worker(index: int, partitions: int, workers: int) -> List[int]:
    return [p for p in range(partitions) if owner_of(p, workers) == index]


def shard_path(data_dir: str, partition: int) -> str:
    return os.path.join(data_dir, f"shard-{partition:04d}.sqlite3")


def _create_meta(path: str, meta: Dict[str, int]) -> None:
    """Write the meta file if nobody has: several processes (workers started on
    their own) may race here, and the first one's file must win whole."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        json.dump(meta, fh)
        fh.flush()
        os.fsync(fh.fileno())
    try:
        os.link(tmp, path)  # atomic, and fails if the file exists
    except FileExistsError:
        pass  # another process was first; its file is checked like any other
    finally:
        os.unlink(tmp)


def ensure_data_dir(data_dir: str, partitions: int) -> Dict[str, int]:
    """Create ``data_dir`` and its meta file, or check the recorded partition count."""
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, META_FILE)
    if not os.path.exists(path):
        _create_meta(path, {"format": META_FORMAT, "partitions": partitions})
    try:
        with open(path) as fh:
            meta = json.load(fh)
    except (OSError, ValueError) as exc:
        raise PartitionMismatch(f"cannot read {path}: {exc}") from None
    recorded = meta.get("partitions")
    if recorded != partitions:
        raise PartitionMismatch(
            f"partitions: the data directory {data_dir} was created with {recorded} partitions, "
            f"the configuration asks for {partitions}; changing it would break dedup, "
            f"so start with --partitions {recorded}")
    return {"format": int(meta.get("format", META_FORMAT)), "partitions": recorded}
