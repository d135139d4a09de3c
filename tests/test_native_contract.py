"""What the README promises a publisher in another language: the byte-level
example, request ids echoed in every error whose body starts readably, error
reasons without Python reprs, and every problem of an event listed (on both
transports)."""

import os
import re
from typing import List, Tuple

import msgpack
import pytest

from agg import protocol
from conftest import AggSystem, RawClient, make_event

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


@pytest.fixture
def raw(agg: AggSystem):
    client = RawClient(agg.ingest)
    yield client
    client.close()


def readme_example() -> Tuple[List[bytes], List[bytes]]:
    """The request and answer frames of the README's hex example."""
    with open(README, encoding="utf-8") as fh:
        text = fh.read()
    block = text.split("<!-- native-example -->", 1)[1].split("```", 2)[1]
    frames = {">": [], "<": []}
    for line in block.splitlines():
        if line[:1] not in frames:
            continue
        side, rest = line[0], line[1:].strip()
        head = re.match(r"frame \d\s+", rest)
        if head:
            frames[side].append(b"")
            rest = rest[head.end():]
        frames[side][-1] += bytes.fromhex(rest.split("  ", 1)[0])
    return frames[">"], frames["<"]


def test_the_readme_s_bytes_get_the_readme_s_answer(agg: AggSystem, raw: RawClient) -> None:
    request, answer = readme_example()
    assert [len(f) for f in request] == [4, 1, 99] and len(answer) == 3
    raw.sock.send_multipart(request)
    assert raw.sock.poll(10000)
    assert raw.sock.recv_multipart() == answer
    # Sent again, the same event is a duplicate: the status byte is 0x00.
    raw.sock.send_multipart(request)
    assert raw.sock.poll(10000)
    assert raw.sock.recv_multipart() == answer[:2] + [answer[2][:-1] + b"\x00"]
    agg.wait_stats(2, 1, 1)


@pytest.mark.parametrize("frames, code, words", [
    ([b"agg0", protocol.BATCH, msgpack.packb([41, []])], protocol.ERR_VERSION, "unknown envelope version 'agg0'"),
    ([protocol.VERSION, b"Z", msgpack.packb([41, []])], protocol.ERR_INVALID, "unknown kind 'Z'"),
    ([protocol.VERSION, protocol.BATCH, msgpack.packb([41, [make_event()]])[:-5]], protocol.ERR_INVALID,
     "not valid msgpack"),
    ([protocol.VERSION, protocol.BATCH, msgpack.packb([41, 5])], protocol.ERR_INVALID, "must be an array"),
    ([protocol.VERSION, protocol.BATCH, msgpack.packb([41, []])], protocol.ERR_INVALID, "the batch is empty"),
    ([protocol.VERSION, protocol.BATCH, msgpack.packb([41, [], 3])], protocol.ERR_INVALID, "[req_id, [event"),
])
def test_errors_carry_the_request_id_and_no_python_reprs(raw: RawClient, frames, code, words) -> None:
    kind, body = raw.ask(frames)
    assert kind == protocol.ERR
    req_id, got_code, reason, _errors = body
    assert (req_id, got_code) == (41, code)
    assert words in reason
    assert "b'" not in reason and 'b"' not in reason, reason


def test_a_message_without_a_readable_id_gets_nil(raw: RawClient) -> None:
    for frames in ([protocol.VERSION, protocol.BATCH], [protocol.VERSION, protocol.BATCH, b"\xc1"]):
        kind, body = raw.ask(frames)
        assert kind == protocol.ERR and body[0] is None


PARTIAL = {"topic": 5, "timestamp": "yesterday", "payload": [1]}  # event_id and source missing
EXPECTED = [(1, "topic"), (1, "event_id"), (1, "timestamp"), (1, "source"), (1, "payload")]


def test_every_problem_is_listed_over_http(agg: AggSystem) -> None:
    status, _, answer = agg.post("/publish", {"events": [make_event(), PARTIAL]})
    assert status == 422
    assert [(e["index"], e["field"]) for e in answer["errors"]] == EXPECTED
    assert answer["errors"][0]["message"] == "must be a string, got number"


def test_every_problem_is_listed_natively(agg: AggSystem, raw: RawClient) -> None:
    kind, (req_id, code, _reason, errors) = raw.ask(
        [protocol.VERSION, protocol.BATCH, msgpack.packb([9, [make_event(), PARTIAL]])])
    assert (kind, req_id, code) == (protocol.ERR, 9, protocol.ERR_INVALID)
    assert [tuple(e[:2]) for e in errors] == EXPECTED
    assert agg.get("/events")[2]["count"] == 0
