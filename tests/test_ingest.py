"""The native ZeroMQ ingest and the Python publisher client, against a real agg."""

import asyncio
import json
import os
import signal
import subprocess
import sys

import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agg import protocol
from agg.client import AsyncPublisher, Publisher
from agg.partition import partition_of
from agg.tools.publish import make_events
from conftest import AggSystem, Ledger, RawClient, make_event, wait_until
from eventrules import Rules


def batch_frames(req_id, events):
    return [protocol.VERSION, protocol.BATCH, msgpack.packb([req_id, events])]


@pytest.fixture
def raw(agg: AggSystem):
    client = RawClient(agg.ingest)
    yield client
    client.close()


def test_native_demo_gives_the_same_figures_as_http(agg: AggSystem) -> None:
    def run():
        out = subprocess.run([sys.executable, "-m", "agg.tools.publish", "--transport", "zmq",
                              "--endpoint", agg.ingest, "--json", "--seed", "3"],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)
    first = run()
    assert (first["acknowledged"], first["stored"], first["duplicates"]) == (5000, 4000, 1000)
    agg.wait_stats(5000, 4000, 1000)
    assert agg.get("/events")[2]["count"] == 4000
    second = run()
    assert (second["stored"], second["duplicates"]) == (0, 5000)
    agg.wait_stats(10000, 4000, 6000)


def test_ack_carries_one_status_per_event(agg: AggSystem, raw: RawClient) -> None:
    events = [make_event(event_id="a"), make_event(event_id="a"), make_event(event_id="b")]
    assert raw.ask(batch_frames(1, events)) == (protocol.OK, [1, b"\x01\x00\x01"])
    assert raw.ask(batch_frames("two", events)) == (protocol.OK, ["two", b"\x00\x00\x00"])
    agg.wait_stats(6, 2, 4)
    # Events of several partitions, interleaved: each status comes back in its event's place.
    keys = [("t.a", "1"), ("t.b", "1"), ("t.a", "1"), ("t.c", "2"), ("t.b", "1"), ("t.d", "1"), ("t.c", "3"),
            ("t.e", "1"), ("t.a", "2")]
    assert len({partition_of(t, 8) % 2 for t, _e in keys}) == 2 and len({partition_of(t, 8) for t, _e in keys}) >= 4
    events = [make_event(topic=t, event_id=e) for t, e in keys]
    assert raw.ask(batch_frames(3, events)) == (protocol.OK, [3, bytes([1, 1, 0, 1, 0, 1, 1, 1, 1])])


def test_invalid_event_gets_an_error_frame_and_stores_nothing(agg: AggSystem, raw: RawClient) -> None:
    events = [make_event(event_id="ok"), make_event(timestamp="2025-10-21T14:30:00"),
              make_event(payload={"x": float("nan")})]
    kind, (req_id, code, reason, errors) = raw.ask(batch_frames(7, events))
    assert (kind, req_id, code) == (protocol.ERR, 7, protocol.ERR_INVALID)
    assert [e[:2] for e in errors] == [[1, "timestamp"], [2, "payload"]]
    assert "nothing was stored" in reason
    assert agg.get("/events")[2]["count"] == 0


@pytest.mark.parametrize("frames, code", [
    ([b"agg0", protocol.BATCH, msgpack.packb([1, []])], protocol.ERR_VERSION),
    ([protocol.VERSION, protocol.BATCH], protocol.ERR_INVALID),
    ([protocol.VERSION, protocol.BATCH, b"\xc1garbage"], protocol.ERR_INVALID),
    ([protocol.VERSION, protocol.BATCH, msgpack.packb([1, [make_event()]])[:-5]], protocol.ERR_INVALID),
    ([protocol.VERSION, b"Z", msgpack.packb([1, []])], protocol.ERR_INVALID),
    ([protocol.VERSION, protocol.BATCH, msgpack.packb({"a": 1})], protocol.ERR_INVALID),
    ([protocol.VERSION, protocol.BATCH, msgpack.packb([1, []])], protocol.ERR_INVALID),
    ([b""], protocol.ERR_INVALID),
])
def test_malformed_frames_get_an_error_frame(reading_agg: AggSystem, frames, code) -> None:
    raw = RawClient(reading_agg.ingest)
    try:
        kind, body = raw.ask(frames)
    finally:
        raw.close()
    assert kind == protocol.ERR and body[1] == code and body[2]
    assert reading_agg.get("/events")[2]["count"] == 0


def test_too_large_message_closes_only_that_connection(agg_factory) -> None:
    system: AggSystem = agg_factory(limits_max_frame_bytes=20000)
    big = RawClient(system.ingest)
    small = RawClient(system.ingest)
    try:
        big.sock.send_multipart(batch_frames(1, [make_event(payload={"x": "y" * 30000})]))
        assert small.ask(batch_frames(2, [make_event()]))[0] == protocol.OK
        # The big one's connection was closed, not answered: the same socket, connected again,
        # has its next message answered, and that is the only answer it ever gets.
        answer = big.ask(batch_frames(3, [make_event(event_id="after")]), 30)
        assert answer is not None, "the big client was not served again"
        kind, body = answer
        assert (kind, body[0]) == (protocol.OK, 3), body
        assert not big.sock.poll(0), "the oversized message was answered"
    finally:
        big.close()
        small.close()
    assert system.stats()["restarts"]["ingest"] == 0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8) | st.integers(-1000, 1000), inner, max_size=4),
    max_leaves=20)


RULES = Rules()


def judged_frames(items) -> tuple:
    """A BATCH of ``items`` and the keys the rules say it stores (None: refused)."""
    want = RULES.expected_keys({"events": items}) if isinstance(items, list) else None
    return [protocol.VERSION, protocol.BATCH, msgpack.packb([1, items], use_bin_type=True)], want, True


# Half of the cases are valid batches with at most one targeted fault per event, judged by
# the rules; the examples pin one of each kind of fault.
garbage = st.one_of(
    st.builds(lambda frames: (frames, None, False), st.lists(st.binary(max_size=64), min_size=1, max_size=5)),
    st.builds(lambda body: ([protocol.VERSION, protocol.BATCH, msgpack.packb(body, use_bin_type=True)], None, False),
              st.lists(json_values, max_size=3).filter(lambda b: len(b) != 2)),
    st.builds(lambda rid, events: judged_frames(events), json_values, st.lists(st.dictionaries(
        st.sampled_from(["topic", "event_id", "timestamp", "source", "payload"]),
        json_values, max_size=5), min_size=1, max_size=3)),
    st.builds(lambda cut: ([protocol.VERSION, protocol.BATCH, msgpack.packb([1, [make_event()]])[:cut]], None, False),
              st.integers(0, 40)),
)
PINNED = [judged_frames([make_event(event_id="pinned"), make_event(**fault)]) for fault in (
    {"event_id": "x" * 257}, {"topic": " "}, {"source": ""}, {"timestamp": "2025-10-21T14:30:00"},
    {"timestamp": "2025-02-29T14:30:00Z"}, {"timestamp": "2025-10-21T14:30:00+24:00"},
    {"payload": {"pad": "y" * 70000}}, {"payload": []}, {"payload": {"x": float("nan")}}, {"topic": 7})]



def pinned(test):
    for case in PINNED:
        test = example(case=case)(test)
    return test


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.one_of(
    st.builds(lambda body: judged_frames(body["events"] if "events" in body else [body]), RULES.body()),
    garbage))
@pinned
def test_fuzzed_frames_never_crash_or_store(agg: AggSystem, raw: RawClient, ledger: Ledger, case) -> None:
    """Every message gets an answer; it is OK exactly when the README's rules
    accept its batch, and after each the stored set and the counters are what
    the accepted batches make them."""
    frames, want, batch = case
    answer = raw.ask(frames)
    assert answer is not None, "every message gets an answer"
    kind, body = answer
    if want is None:
        assert kind == protocol.ERR and body[1] in (protocol.ERR_INVALID, protocol.ERR_VERSION), (frames, body)
        if batch:  # a batch of events the rules refuse: ERR invalid, naming the events
            assert body[1] == protocol.ERR_INVALID and body[3], body
            assert all(isinstance(e[0], int) for e in body[3]), body
    else:
        assert kind == protocol.OK, (frames, body)
        assert list(body[1]) == ledger.accepted(want), (frames, body)
    ledger.check(agg)


def test_garbage_leaves_the_connection_and_process_serving(agg: AggSystem, raw: RawClient) -> None:
    # After garbage, the same connection and the same process still work, and count it.
    for frames in ([b"\x00"], [b"agg1", b"B", b"\xff" * 100], [protocol.VERSION, protocol.BATCH, b""]):
        assert raw.ask(frames)[0] == protocol.ERR
    assert raw.ask(batch_frames(9, [make_event()]))[0] == protocol.OK
    agg.wait_stats(1, 1, 0)
    stats = wait_until(lambda: (lambda s: s if s["rejected"] == 3 else None)(agg.stats()),
                       message="3 rejects counted")
    assert stats["restarts"]["ingest"] == 0
    assert stats["rejected_by_reason"] == {"malformed_message": 3}


def test_sigkill_of_a_worker_mid_stream_loses_no_acknowledged_event(agg_factory) -> None:
    system: AggSystem = agg_factory()
    events = make_events(40000, 0.2, seed=21)
    expected = {(e["topic"], e["event_id"]) for e in events}
    acked = []
    victim = system.child_pid("worker.1")

    def on_ack(n):
        acked.append(n)
        if sum(acked) >= 8000 and len(acked) == 8000 // 500:
            os.kill(victim, signal.SIGKILL)
    with Publisher(system.ingest, batch_size=500, max_inflight=4, ack_timeout=5, max_backoff=0.5) as pub:
        result = pub.publish(events, on_ack)
    assert result.acknowledged == len(events) and result.failed == 0
    assert result.retries > 0, "the kill happened mid-stream, so some batch was refused or lost"
    wait_until(lambda: system.get("/health")[0] == 200, 30, message="worker.1 back")
    stored = [(e["topic"], e["event_id"]) for e in system.get("/events")[2]["events"]]
    assert len(stored) == len(set(stored)) and set(stored) == expected
    stats = system.stats()
    assert stats["unique_processed"] == len(expected)
    assert stats["received"] == stats["unique_processed"] + stats["duplicate_dropped"]
    assert stats["restarts"]["worker.1"] == 1


def test_async_publisher(agg: AggSystem) -> None:
    async def go():
        async with AsyncPublisher(agg.ingest, batch_size=100, max_inflight=3) as pub:
            return await pub.publish(make_events(1000, 0.2, seed=4))
    result = asyncio.run(go())
    assert (result.acknowledged, result.stored, result.duplicates) == (1000, 800, 200)


def test_curve_admits_listed_clients_only(agg_factory, tmp_base) -> None:
    import zmq.auth
    keys = os.path.join(tmp_base, "keys")
    allowed = os.path.join(tmp_base, "allowed")
    os.makedirs(keys)
    os.makedirs(allowed)
    server_public, server_secret = zmq.auth.create_certificates(keys, "server")
    client_public, client_secret = zmq.auth.create_certificates(keys, "client")
    _stranger_public, stranger_secret = zmq.auth.create_certificates(keys, "stranger")
    os.rename(client_public, os.path.join(allowed, "client.key"))
    system: AggSystem = agg_factory(ingest_curve_secret_key=server_secret, ingest_curve_clients_dir=allowed)
    server_key = zmq.auth.load_certificate(server_public)[0]

    def attempt(**kwargs):
        with Publisher(system.ingest, ack_timeout=1.0, max_retries=1, max_backoff=0.1, **kwargs) as pub:
            return pub.publish([make_event(event_id=str(kwargs))])

    assert attempt(curve_server_key=server_key, curve_client_cert=client_secret).acknowledged == 1
    assert attempt(curve_server_key=server_key, curve_client_cert=stranger_secret).acknowledged == 0
    assert attempt().acknowledged == 0  # no CURVE at all
    system.wait_stats(1, 1, 0)
