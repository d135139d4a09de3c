"""The named shapes on the wire write the same bytes as the lists and maps they
name, so that processes of the agg before them still understand them."""

import msgpack

from agg import protocol
from agg.protocol import (Alive, Counts, EdgeSnapshot, Event, Part, PartitionCounts, Query, Ready,
                          StoreBody, StoredRow, SupervisorSnapshot, WorkerSnapshot)


def old(value) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def test_structs_encode_as_the_lists_and_maps_they_name() -> None:
    event = Event("t", "e", "2025-10-21T14:30:00Z", "s", b'{"a":1}')
    as_list = ["t", "e", "2025-10-21T14:30:00Z", "s", b'{"a":1}']
    assert protocol.pack(event) == old(as_list)
    # A STORE body as fronts sent it before the deadline: [req_id, parts].
    assert protocol.pack(StoreBody(7, [Part(3, [event])], 1.5)) == old([7, [[3, [as_list]]], 1.5])
    assert protocol.unpack_as(old([7, [[3, [as_list]]]]), StoreBody) == StoreBody(7, [Part(3, [event])], 0.0)
    row = StoredRow(3, 9, "t", "e", "ts", "s", b"{}", "2026-01-01T00:00:00.000000Z")
    assert protocol.pack(row) == old([3, 9, "t", "e", "ts", "s", b"{}", "2026-01-01T00:00:00.000000Z"])
    assert protocol.pack(Query("t", {1: 5}, 10)) == old({"topic": "t", "after": {1: 5}, "limit": 10})
    counts = PartitionCounts(3, 2, 1, {"t": Counts(3, 2, 1)})
    assert protocol.pack(counts) == old([3, 2, 1, {"t": [3, 2, 1]}])
    assert protocol.pack(WorkerSnapshot(1, 42, [1, 3], None, 2.5, {1: counts})) == old(
        {"worker": 1, "pid": 42, "owns": [1, 3], "storage_error": None, "time": 2.5,
         "partitions": {1: [3, 2, 1, {"t": [3, 2, 1]}]}})
    assert protocol.pack(EdgeSnapshot(42, "ingest", {"too_large": 1}, [0, 5], 2.5, {"batches": 2})) == old(
        {"pid": 42, "role": "ingest", "rejected": {"too_large": 1}, "inflight": [0, 5], "time": 2.5,
         "counted": {"batches": 2}})
    # An edge from before "counted" still reads.
    assert protocol.unpack_as(old({"pid": 42, "role": "front", "rejected": {}, "inflight": [0], "time": 2.5}),
                              EdgeSnapshot) == EdgeSnapshot(42, "front", {}, [0], 2.5, {})
    assert protocol.pack(SupervisorSnapshot(42, 2.5, {"front": 1}, ["worker.0"])) == old(
        {"pid": 42, "time": 2.5, "restarts": {"front": 1}, "down": ["worker.0"]})
    assert protocol.pack(Ready("worker", 1, 42, "ipc://w1")) == old(
        {"role": "worker", "index": 1, "pid": 42, "endpoint": "ipc://w1"})
    assert protocol.pack(Alive(42)) == old({"pid": 42})


def test_counts_add_up() -> None:
    assert Counts(3, 2, 1) + Counts(1, 0, 1) == Counts(4, 2, 2)
    assert PartitionCounts(3, 2, 1, {}).counts == Counts(3, 2, 1)


def test_a_body_of_another_shape_is_a_protocol_error() -> None:
    import pytest
    with pytest.raises(protocol.ProtocolError, match="StoreBody"):
        protocol.unpack_as(old(["not", "parts"]), StoreBody)
