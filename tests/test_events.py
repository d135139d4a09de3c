"""Validation of events, shared by the HTTP front and the native ingest."""

import pytest

from agg.events import InvalidEvents, Limits, check_timestamp, events_of_body, validate_batch
from agg.protocol import Event

LIMITS = Limits(max_field_chars=16, max_payload_bytes=64, max_batch_events=3)


def event(**changes):
    base = {"topic": "t", "event_id": "e", "timestamp": "2025-10-21T14:30:00Z",
            "source": "s", "payload": {"a": 1}}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not ...}


@pytest.mark.parametrize("stamp", [
    "2025-10-21T14:30:00Z", "2025-10-21T14:30:00.123456+02:00", "2025-10-21 14:30Z",
    "2025-10-21T14:30:00-0530", "2024-02-29T00:00:00z",
])
def test_timestamps_with_a_zone_are_accepted(stamp) -> None:
    assert check_timestamp(stamp) is None


@pytest.mark.parametrize("stamp", [
    "2025-10-21T14:30:00", "2025-10-21", "yesterday", "2025-13-01T00:00:00Z",
    "2025-02-30T00:00:00Z", "2025-10-21T25:00:00Z", "2025-10-21T14:30:00+25:00", "",
    "2025-10-21T14:30:00Z trailing", "２０２５-10-21T14:30:00Z", "2025-10-21T14:30:0٣Z",
])
def test_timestamps_without_zone_or_invalid_are_refused(stamp) -> None:
    assert check_timestamp(stamp) is not None


@pytest.mark.parametrize("changes, field, words", [
    ({"topic": ...}, "topic", "required"),
    ({"event_id": ""}, "event_id", "empty"),
    ({"source": "   "}, "source", "empty"),
    ({"topic": 5}, "topic", "string"),
    ({"event_id": "x" * 17}, "event_id", "at most 16"),
    ({"timestamp": "2025-10-21T14:30:00"}, "timestamp", "time zone"),
    ({"timestamp": 1700000000}, "timestamp", "string"),
    ({"payload": [1, 2]}, "payload", "object"),
    ({"payload": {"big": "x" * 100}}, "payload", "at most 64 bytes"),
    ({"payload": {"b": b"\xff"}}, "payload", "JSON"),
])
def test_each_invalid_field_is_named(changes, field, words) -> None:
    with pytest.raises(InvalidEvents) as caught:
        validate_batch([event(), event(**changes)], LIMITS)
    errors = caught.value.errors
    assert [(e.index, e.field) for e in errors] == [(1, field)]
    assert words in errors[0].reason


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(InvalidEvents) as caught:
        validate_batch([event(topic=""), "nope", event(payload=None)], LIMITS)
    assert [(e.index, e.field) for e in caught.value.errors] == [(0, "topic"), (1, None), (2, "payload")]


def test_batch_limits() -> None:
    with pytest.raises(InvalidEvents, match="at most 3 events"):
        validate_batch([event()] * 4, LIMITS)
    with pytest.raises(InvalidEvents, match="empty"):
        validate_batch([], LIMITS)


def test_valid_events_come_out_in_wire_form() -> None:
    out = validate_batch([event(), event(event_id="f", extra="ignored")], LIMITS)
    assert out == [Event("t", "e", "2025-10-21T14:30:00Z", "s", b'{"a":1}'),
                   Event("t", "f", "2025-10-21T14:30:00Z", "s", b'{"a":1}')]


def test_body_shapes() -> None:
    assert events_of_body(event()) == ([event()], True)
    assert events_of_body({"events": [event()]}) == ([event()], False)
    for bad in ([event()], "x", {"events": {"a": 1}}):
        with pytest.raises(InvalidEvents):
            events_of_body(bad)


# -- the fast path accepts only what the slow path accepts ----------------------------------

import json  # noqa: E402

import orjson  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from agg.events import FastJsonDecoder  # noqa: E402

FAST = FastJsonDecoder(LIMITS)
field_text = st.sampled_from(["t", "e", " ", "", "x" * 16, "x" * 17, "ü", "a\x00b"]) | st.text(max_size=18)
stamps = st.sampled_from(["2025-10-21T14:30:00Z", "2025-02-29T00:00:00Z", "2024-02-29T23:59:59+14:00",
                          "2025-04-31T00:00:00Z", "2025-10-21T14:30:00", "2025-10-21 14:30:00.5-05:30",
                          "2025-10-21T24:00:00Z", "2025-10-21T14:30:00+24:00", "２０２５-10-21T14:30:00Z"])
payloads = st.sampled_from([{}, {"a": 1}, [], "x", None, {"big": "y" * 70}, {"n": {"m": [1, 2.5]}}])


def body_strategy():
    event = st.fixed_dictionaries({}, optional={
        "topic": field_text, "event_id": field_text, "timestamp": stamps | field_text,
        "source": field_text, "payload": payloads, "extra": st.integers(-2**63, 2**63 - 1)})
    return st.one_of(event, st.fixed_dictionaries({"events": st.lists(event, max_size=4)}),
                     st.fixed_dictionaries({"events": st.lists(event, max_size=2), "topic": field_text}))


@settings(max_examples=400, deadline=None)
@given(body=body_strategy(), spaced=st.booleans())
def test_fast_decoder_agrees_with_validation(body, spaced) -> None:
    raw = json.dumps(body, indent=1 if spaced else None).encode()
    fast = FAST.decode(raw)
    try:
        items, single = events_of_body(orjson.loads(raw))
        slow = validate_batch(items, LIMITS, single)
    except InvalidEvents:
        slow = None
    if fast is not None:
        assert slow is not None, f"fast path accepted what validation refuses: {raw!r}"
        def head(e: Event) -> tuple:
            return (e.topic, e.event_id, e.timestamp, e.source)
        assert [head(e) for e in fast] == [head(e) for e in slow]
        assert [orjson.loads(e.payload) for e in fast] == [orjson.loads(e.payload) for e in slow]


def test_fast_decoder_takes_valid_bodies_and_keeps_the_payload_text() -> None:
    raw = b'{"events": [{"topic": "t", "event_id": "e", "timestamp": "2025-10-31T14:30:00Z",' \
          b' "source": "s", "payload": {"a": [1, 2]}, "extra": 1}]}'
    assert FAST.decode(raw) == [Event("t", "e", "2025-10-31T14:30:00Z", "s", b'{"a": [1, 2]}')]
    single = json.dumps(event(), separators=(",", ":")).encode()
    assert FAST.decode(single) == validate_batch([event()], LIMITS)
    assert FAST.decode(json.dumps(event(timestamp="2025-02-30T00:00:00Z")).encode()) is None
    assert FAST.decode(json.dumps(event(timestamp="２０２５-10-21T14:30:00Z")).encode()) is None
    # Invalid UTF-8 inside the payload, which msgspec skips over without decoding.
    assert FAST.decode(json.dumps(event()).encode().replace(b'{"a"', b'{"\xff"')) is None
    assert FAST.decode(json.dumps(event(payload={"n": "ünï"}), ensure_ascii=False).encode()) is not None


@settings(max_examples=300, deadline=None)
@given(body=body_strategy(), nan=st.booleans())
def test_fast_msgpack_decoder_agrees_with_validation(body, nan) -> None:
    import msgpack
    from agg.events import FastMsgpackDecoder

    items = body["events"] if "events" in body else [body]
    if nan and items and isinstance(items[0], dict):
        items[0]["payload"] = {"x": float("nan")}
    fast = FastMsgpackDecoder(LIMITS).decode(msgpack.packb([7, items]))
    try:
        slow = validate_batch(items, LIMITS)
    except InvalidEvents:
        slow = None
    if fast is not None:
        assert slow is not None and fast == (7, slow)


def test_msgpack_values_without_a_json_form_are_refused_on_both_paths() -> None:
    """A timestamp, bytes, an extension type or an integer key inside a msgpack
    payload has no JSON form: the ingest's fast path and its slow path both
    refuse it, whatever else the batch holds."""
    import datetime

    import msgpack
    from agg import protocol
    from agg.events import FastMsgpackDecoder

    stamp = msgpack.Timestamp.from_datetime(datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc))
    for value in (stamp, b"\x00bytes", msgpack.ExtType(5, b"x"), {1: "an integer key"}):
        body = msgpack.packb([7, [event(), event(payload={"v": value})]])
        assert FastMsgpackDecoder(LIMITS).decode(body) is None, value
        _req_id, items = protocol.unpack(body)
        with pytest.raises(InvalidEvents) as refused:
            validate_batch(items, LIMITS)
        assert [(e.index, e.field) for e in refused.value.errors] == [(1, "payload")]


def test_a_missing_field_does_not_hide_the_type_errors_beside_it() -> None:
    with pytest.raises(InvalidEvents) as caught:
        validate_batch([{"topic": 5, "timestamp": "yesterday", "payload": [1]}], LIMITS)
    assert [(e.index, e.field) for e in caught.value.errors] == [
        (0, "topic"), (0, "event_id"), (0, "timestamp"), (0, "source"), (0, "payload")]
    reasons = {e.field: e.reason for e in caught.value.errors}
    assert reasons["topic"] == "must be a string, got number"
    assert reasons["event_id"] == reasons["source"] == "is required"
    assert "ISO 8601" in reasons["timestamp"] and "object" in reasons["payload"]


# -- both paths follow the README's rules (an oracle apart from agg.events) -----------------

from eventrules import Rules  # noqa: E402

RULES = Rules(LIMITS.max_field_chars, LIMITS.max_payload_bytes, LIMITS.max_batch_events)


def keys_of(events) -> list:
    return [(e.topic, e.event_id) for e in events]


@settings(max_examples=600, deadline=None)
@given(body=RULES.body(), spaced=st.booleans())
def test_both_json_paths_follow_the_rules(body, spaced) -> None:
    """Valid events with at most one fault each (most often a timestamp without
    its zone): the slow path accepts exactly what the rules accept, and the
    fast path accepts nothing else."""
    raw = json.dumps(body, indent=1 if spaced else None).encode()
    want = RULES.expected_of_json(raw)
    try:
        items, single = events_of_body(orjson.loads(raw))
        slow = keys_of(validate_batch(items, LIMITS, single))
    except (InvalidEvents, orjson.JSONDecodeError):
        slow = None
    assert slow == want, raw
    fast = FAST.decode(raw)
    if fast is not None:
        assert keys_of(fast) == want, f"fast path accepted what the rules refuse: {raw!r}"


@settings(max_examples=400, deadline=None)
@given(body=RULES.body())
def test_both_msgpack_paths_follow_the_rules(body) -> None:
    import msgpack
    from agg.events import FastMsgpackDecoder

    items = body["events"] if "events" in body else [body]
    want = RULES.expected_keys({"events": items})
    try:
        slow = keys_of(validate_batch(items, LIMITS))
    except InvalidEvents:
        slow = None
    assert slow == want, items
    fast = FastMsgpackDecoder(LIMITS).decode(msgpack.packb([7, items]))
    if fast is not None:
        assert fast[0] == 7 and keys_of(fast[1]) == want, f"fast path accepted what the rules refuse: {items!r}"


@settings(max_examples=100, deadline=None)
@given(e=RULES.valid_event(), data=st.data())
def test_the_rules_generators_make_what_they_say(e, data) -> None:
    """The oracle's generators: a valid event passes its rules and each fault
    makes it fail them (else the tests above prove little)."""
    from eventrules import FAULTS

    assert RULES.event_ok(e), e
    fault = data.draw(st.sampled_from(FAULTS))
    assert not RULES.event_ok(fault(RULES, e, data)), fault
