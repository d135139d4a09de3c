"""Hostile input over HTTP: every answer is a JSON error, no process dies, nothing is stored."""

import json
import socket
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import AggSystem, Ledger, make_event, wait_until
from eventrules import Rules

RULES = Rules()


def mutate(raw: bytes, position: int, junk: bytes) -> bytes:
    position %= max(len(raw), 1)
    return raw[:position] + junk + raw[position:]


valid_body = st.builds(lambda n: json.dumps({"events": [make_event(event_id=f"f{n}-{i}") for i in range(3)]}).encode(),
                       st.integers(0, 10**9))
# Judged by the README's rules (tests/eventrules.py).
judged = st.one_of(
    st.builds(lambda body: json.dumps(body).encode(), RULES.body()),
    st.binary(max_size=200),
    st.builds(mutate, valid_body, st.integers(0, 500),
              st.sampled_from([b"\xff", b"\xc3\x28", b"NaN", b"Infinity", b"\x00", b'"', b"}", b",,"])),
    st.builds(lambda stamp: json.dumps(make_event(timestamp=stamp)).encode(),
              st.sampled_from(["2025-10-21T14:30:00", "2025-10-21", "1700000000", "2025-10-21T14:30:00+99:00"])),
    st.builds(lambda n: json.dumps(make_event(event_id="x" * n)).encode(), st.integers(257, 5000)),
    st.just(b'{"topic":"t","topic":"u","event_id":"e","timestamp":"2025-10-21T14:30:00Z","source":"s","payload":{}}'),
    st.builds(lambda v: json.dumps({"events": [make_event(payload=v)]}).encode(),
              st.sampled_from([None, 1, "s", [], [{}], True])),
).map(lambda raw: (raw, RULES.expected_of_json(raw)))
# Deep nesting, which the README's rules do not bound: hostile, so refused.
deep = st.builds(lambda depth: (b'{"topic":"t","event_id":"e","timestamp":"2025-10-21T14:30:00Z","source":"s",'
                                b'"payload":' + b'{"a":' * depth + b"1" + b"}" * depth + b"}", None),
                 st.integers(200, 5000))


PINNED = [json.dumps({"events": [make_event(event_id="pinned"), make_event(**fault)]}).encode() for fault in (
    {"event_id": "x" * 257}, {"topic": " "}, {"source": ""}, {"timestamp": "2025-10-21T14:30:00"},
    {"timestamp": "2025-02-29T14:30:00Z"}, {"timestamp": "2025-10-21T14:30:00+24:00"},
    {"payload": {"pad": "y" * 70000}}, {"payload": []}, {"topic": 7})]


def pinned(test):
    """One example of each kind of fault, whatever hypothesis draws."""
    for raw in PINNED:
        test = example(case=(raw, RULES.expected_of_json(raw)))(test)
    return test


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=judged | deep)
@pinned
def test_hostile_bodies_get_json_errors_and_store_nothing_invalid(agg: AggSystem, ledger: Ledger, case) -> None:
    """Each body is judged by the rules, not by agg's validation: refused with a
    JSON error that stores and counts nothing but the rejection, or stored
    whole; after each, the stored set and every counter are what they must be."""
    raw, want = case
    status, headers, body = agg.post("/publish", raw=raw)
    assert headers["content-type"].startswith("application/json")
    if want is None:
        assert status == 422 and body["title"] == "Invalid request" and body["description"], (raw, body)
        ledger.rejected += 1
    else:
        assert status == 200, (raw, body)  # e.g. duplicate keys: the last one wins, as in every JSON parser
        statuses = ledger.accepted(want)
        assert (body["stored"], body["duplicates"]) == (sum(statuses), statuses.count(0)), (raw, body)
    ledger.check(agg, rejected=True)


def test_hostile_input_killed_nothing(agg: AggSystem) -> None:
    for raw in (b"\xff" * 100, b"[" * 100000, b'{"events": [' + b"{}," * 20000 + b"{}]}"):
        assert agg.post("/publish", raw=raw)[0] in (413, 422)
    stats = agg.stats()
    assert stats["restarts"]["front"] == 0 and stats["received"] == 0


def raw_request(system: AggSystem) -> socket.socket:
    host, port = system.url.split("//")[1].rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


def test_chunked_body_past_the_limit_gets_413(agg_factory) -> None:
    system: AggSystem = agg_factory(limits_max_body_bytes=10000)
    sock = raw_request(system)
    try:
        sock.sendall(b"POST /publish HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 4000
        for _ in range(4):
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"Body too large"' in answer


def test_a_body_that_never_ends_blocks_no_one_else(agg: AggSystem) -> None:
    stalled = [raw_request(agg) for _ in range(20)]
    try:
        for sock in stalled:
            sock.sendall(b"POST /publish HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"eve")
        status, _, body = agg.post("/publish", make_event())
        assert status == 200 and body["stored"] == 1
    finally:
        for sock in stalled:
            sock.close()
    wait_until(lambda: agg.get("/health")[0] == 200, message="still healthy")
    assert agg.stats()["restarts"]["front"] == 0
