"""A worker's own checks on what reaches its socket, spoken to directly.

The front and the ingest validate and route, but a worker must still refuse a
batch that is malformed or carries a topic of another partition (a peer with
another partition map, a bug): storing it would break dedup. Its fast path
(a typed decode and a cache of known topics) must refuse exactly what its slow
path refuses.
"""

from __future__ import annotations

import subprocess
from typing import Any, List, Tuple

from agg import protocol
from agg.partition import partitions_of_worker, shard_path
from conftest import RawClient, cannot_run_here, topic_in

PARTITIONS = 8
WORKERS = 2


class WorkerClient(RawClient):
    def send(self, events: List[Any]) -> Tuple[bool, Any]:
        """Send ``events`` ([partition, event...] each) as a STORE, each event in
        a part of its own (the worker joins the parts of one partition)."""
        return self.request(protocol.STORE, [[ev[0], [ev[1:]]] for ev in events])


def event(partition: int, topic: str, event_id: str) -> List[Any]:
    return [partition, topic, event_id, "2025-10-21T14:30:00Z", "test", b'{"n": 1}']


def test_worker_stores_its_own_and_refuses_what_is_not(agg_factory) -> None:
    agg = agg_factory(partitions=PARTITIONS, workers=WORKERS)
    mine = partitions_of_worker(0, PARTITIONS, WORKERS)
    theirs = partitions_of_worker(1, PARTITIONS, WORKERS)
    topic, other_topic = topic_in(mine[0]), topic_in(mine[1])
    client = WorkerClient(agg.endpoints["workers"][0])
    try:
        ok, statuses = client.send([event(mine[0], topic, "a"), event(mine[1], other_topic, "b"),
                                    event(mine[0], topic, "a")])
        assert ok and list(statuses) == [protocol.STORED, protocol.STORED, protocol.DUPLICATE]

        # A topic the worker knows, under another of its own partitions: refused,
        # with nothing of the batch stored (its good first event included).
        ok, payload = client.send([event(mine[0], topic, "c"), event(mine[1], topic, "d")])
        assert not ok and payload[0] == protocol.ERR_INVALID and "not in partition" in payload[1]
        # Another worker's partition, and a topic it has never seen.
        ok, payload = client.send([event(theirs[0], topic_in(theirs[0]), "e")])
        assert not ok and payload[0] == protocol.ERR_INVALID and "not in partition" in payload[1]
        # Malformed: a field missing, a payload that is text instead of bytes.
        ok, payload = client.send([event(mine[0], topic, "f")[:5]])
        assert not ok and payload[0] == protocol.ERR_INVALID
        ok, payload = client.send([event(mine[0], topic, "g")[:5] + ["{}"]])
        assert not ok and payload[0] == protocol.ERR_INVALID

        ok, statuses = client.send([event(mine[0], topic, "a"), event(mine[0], topic, "h")])
        assert ok and list(statuses) == [protocol.DUPLICATE, protocol.STORED]
    finally:
        client.close()
    agg.wait_stats(received=5, unique=3, duplicates=2)
    status, _, body = agg.get(f"/events?topic={topic}")
    assert status == 200 and [e["event_id"] for e in body["events"]] == ["a", "h"]


def test_a_batch_in_the_form_before_store_is_still_taken(agg_factory) -> None:
    """A front or ingest of an earlier agg sends a flat BATCH of
    [partition, topic, event_id, timestamp, source, payload] events: a worker
    upgraded first still stores it, answering statuses in the events' order."""
    agg = agg_factory(partitions=PARTITIONS, workers=WORKERS)
    first, second = partitions_of_worker(0, PARTITIONS, WORKERS)[:2]
    theirs = partitions_of_worker(1, PARTITIONS, WORKERS)[0]
    client = WorkerClient(agg.endpoints["workers"][0])

    def send_batch(body: Any) -> Tuple[bool, Any]:
        return client.request(protocol.BATCH, body)
    try:
        one, two = topic_in(first), topic_in(second)
        ok, statuses = send_batch([event(first, one, "a"), event(second, two, "b"), event(first, one, "a"),
                                   event(second, two, "c"), event(first, one, "d")])
        assert ok and list(statuses) == [1, 1, 0, 1, 1]
        ok, statuses = send_batch([event(second, two, "c"), event(first, one, "e")])
        assert ok and list(statuses) == [0, 1]
        ok, payload = send_batch([event(theirs, topic_in(theirs), "f")])
        assert not ok and "not in partition" in payload[1]
        for malformed in ("events", [[]], [event(first, one, "g")[:5]]):
            ok, payload = send_batch(malformed)
            assert not ok and payload[0] == protocol.ERR_INVALID
    finally:
        client.close()
    agg.wait_stats(received=7, unique=5, duplicates=2)


def test_a_failing_shard_fails_only_the_requests_that_touch_it(agg_factory) -> None:
    """One shard's failed commit fails exactly the batches with events in it;
    the group's other shards commit, and their batches are answered OK."""
    agg = agg_factory(partitions=PARTITIONS, workers=WORKERS)
    good, bad, other = partitions_of_worker(0, PARTITIONS, WORKERS)[:3]
    client = WorkerClient(agg.endpoints["workers"][0])
    try:
        ok, _ = client.send([event(p, topic_in(p), "warm") for p in (good, bad, other)])
        assert ok
        # The immutable flag refuses writes even to root, even on open files (see test_disk).
        path = shard_path(agg.data_dir, bad)
        if subprocess.run(["chattr", "+i", path, path + "-wal"], capture_output=True).returncode != 0:
            cannot_run_here("chattr +i is not available here")
        try:
            ok, statuses = client.send([event(good, topic_in(good), "a"), event(other, topic_in(other), "b")])
            assert ok and list(statuses) == [protocol.STORED, protocol.STORED]
            ok, payload = client.send([event(good, topic_in(good), "c"), event(bad, topic_in(bad), "d")])
            assert not ok and payload[0] == protocol.ERR_INTERNAL and f"partition {bad}" in payload[1]
        finally:
            subprocess.run(["chattr", "-i", path, path + "-wal"], check=True)
        ok, statuses = client.send([event(good, topic_in(good), "c"), event(bad, topic_in(bad), "d")])
        assert ok and list(statuses) == [protocol.DUPLICATE, protocol.STORED]  # "c" was committed
    finally:
        client.close()


def test_shards_of_a_worker_checkpoint_at_staggered_wal_sizes() -> None:
    from agg.worker import staggered

    sizes = [staggered(16000, n, 4) for n in range(4)]
    assert sorted(set(sizes)) == sizes and (sizes[0], sizes[-1]) == (12000, 20000)
    assert abs(sum(sizes) / len(sizes) - 16000) < 200
    assert staggered(16000, 0, 1) == 16000  # a worker with one shard
    assert staggered(0, 3, 4) == 0  # 0 turns automatic checkpoints off, for every shard
