"""The README's rules for an event, written again for the tests, apart from
``agg.events``, so that a fuzzer judges agg's answers by the rules and not by
agg's own validation (a weakened validation would agree with itself):

    ``topic``, ``event_id`` and ``source`` are non-blank strings of at most
    ``limits.max_field_chars`` (256) characters; ``timestamp`` is ISO 8601
    with a zone (``Z`` or ``±hh:mm``), stored as given; ``payload`` is a JSON
    object of at most ``limits.max_payload_bytes`` (64 KiB). Other fields are
    ignored. A request holds one event, or ``{"events": [...]}`` of 1 to
    ``limits.max_batch_events`` events, and is refused whole if any is invalid.

Where the README leaves a corner open (timestamps in ISO 8601's basic form,
payload sizes near the bound), the generators here do not go, so that
every input they make has one right answer. ``valid_event`` builds a valid
event, ``faulty_event`` a valid one with exactly one fault, and
``expected_keys`` says what a body must store: its keys, or None (refused).
"""

from __future__ import annotations

import datetime
import json
import math
import re
from typing import Any, List, Optional, Tuple

from hypothesis import strategies as st

FIELD_CHARS = 256
PAYLOAD_BYTES = 64 * 1024
BATCH_EVENTS = 10000
TEXT_FIELDS = ("topic", "event_id", "source")

Key = Tuple[str, str]
# The shape of extended ISO 8601 with a zone, character by character (fromisoformat alone
# is lenient: Python 3.11 reads "2025-10-21T14:30:00}Z"); whether it is a real date and
# time is fromisoformat's to say.
EXTENDED_STAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2}([.,][0-9]+)?)?"
                            r"([Zz]|[+-][0-9]{2}:[0-9]{2})\Z")


class Rules:
    def __init__(self, field_chars: int = FIELD_CHARS, payload_bytes: int = PAYLOAD_BYTES,
                 batch_events: int = BATCH_EVENTS) -> None:
        self.field_chars = field_chars
        self.payload_bytes = payload_bytes
        self.batch_events = batch_events

    # -- the oracle -----------------------------------------------------------------------

    def text_ok(self, value: Any) -> bool:
        return isinstance(value, str) and bool(value.strip()) and len(value) <= self.field_chars

    @staticmethod
    def timestamp_ok(value: Any) -> bool:
        """Extended ISO 8601, a real date and time, and a zone (Z or ±hh:mm)."""
        if not isinstance(value, str) or not EXTENDED_STAMP.match(value):
            return False
        zone = value[-6:]
        if value[-1] not in "Zz":
            if zone[0] not in "+-" or zone[3] != ":" or not (zone[1:3] + zone[4:]).isdigit() \
                    or int(zone[1:3]) > 23 or int(zone[4:]) > 59:
                return False
        # fromisoformat before Python 3.11 takes neither Z nor "," nor fractions other than
        # of 3 or 6 digits: say those the way every version reads them.
        text = value[:-1] + "+00:00" if value[-1] in "Zz" else value
        fraction = re.search(r"[.,]([0-9]+)(?=[+-][0-9]{2}:[0-9]{2}$)", text)
        if fraction:
            text = text[:fraction.start()] + "." + (fraction.group(1) + "000000")[:6] + text[fraction.end():]
        try:
            parsed = datetime.datetime.fromisoformat(text)
        except ValueError:
            return False
        return parsed.tzinfo is not None

    def payload_ok(self, value: Any) -> bool:
        """A JSON object: string keys all the way down (a msgpack map may have others)."""
        if not isinstance(value, dict) or not _string_keys(value):
            return False
        try:
            text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError):
            return False
        return len(text.encode("utf-8", "surrogatepass")) <= self.payload_bytes

    def event_ok(self, event: Any) -> bool:
        return (isinstance(event, dict) and all(self.text_ok(event.get(f)) for f in TEXT_FIELDS)
                and self.timestamp_ok(event.get("timestamp")) and self.payload_ok(event.get("payload")))

    def expected_keys(self, body: Any) -> Optional[List[Key]]:
        """The keys a request body must store (in order, repeats kept), or None if
        it must be refused whole."""
        if isinstance(body, dict) and "events" in body and "topic" not in body:
            events = body["events"]
            if not isinstance(events, list) or not 1 <= len(events) <= self.batch_events:
                return None
        elif isinstance(body, dict):
            events = [body]
        else:
            return None
        if not all(self.event_ok(e) for e in events):
            return None
        return [(e["topic"], e["event_id"]) for e in events]

    def expected_of_json(self, raw: bytes) -> Optional[List[Key]]:
        """``expected_keys`` of raw JSON bytes: None if they are not strict JSON
        (UTF-8, no NaN or Infinity, no control characters in strings)."""
        def no_constant(name: str) -> Any:
            raise ValueError(name)
        try:
            body = json.loads(raw.decode("utf-8"), parse_constant=no_constant)
        except (UnicodeDecodeError, ValueError, RecursionError):
            return None
        if _has_surrogate(body):
            return None  # no UTF-8 form: cannot be stored as given
        return self.expected_keys(body)

    # -- generators -----------------------------------------------------------------------

    def text(self) -> st.SearchStrategy:
        return st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1,
                       max_size=self.field_chars).filter(lambda s: s.strip()) | st.sampled_from(
            ["t", "user.created", "x" * self.field_chars, "ünï", "a b"])

    @staticmethod
    def zoned_timestamp() -> st.SearchStrategy:
        return st.builds(_stamp, st.dates(datetime.date(1000, 1, 1), datetime.date(9999, 12, 31)),
                         st.times(), st.sampled_from(["T", " ", "t"]), st.sampled_from(["min", "s", "frac"]),
                         st.sampled_from(["Z", "z", "+", "-"]), st.integers(0, 14), st.integers(0, 59))

    def payload(self) -> st.SearchStrategy:
        small = st.recursive(st.none() | st.booleans() | st.integers(-2**53, 2**53)
                             | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=5),
                             lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                                 st.text(max_size=4), inner, max_size=3), max_leaves=6)
        return st.dictionaries(st.text(max_size=4), small, max_size=3).filter(
            lambda p: self.payload_ok(p) and len(json.dumps(p)) <= self.payload_bytes // 2)

    def valid_event(self) -> st.SearchStrategy:
        return st.fixed_dictionaries(
            {"topic": self.text(), "event_id": self.text(), "timestamp": self.zoned_timestamp(),
             "source": self.text(), "payload": self.payload()},
            optional={"extra": st.integers(-2**63, 2**63 - 1) | st.text(max_size=3)})

    def faulty_event(self) -> st.SearchStrategy:
        """A valid event with exactly one fault; zone-less timestamps weigh most,
        as the fault a fast path is likeliest to let through."""
        return st.builds(lambda e, fault, data: fault(self, e, data), self.valid_event(),
                         st.sampled_from(FAULTS), st.data())

    def event(self) -> st.SearchStrategy:
        """Mostly valid, else one fault."""
        return st.one_of(self.valid_event(), self.faulty_event())

    def body(self) -> st.SearchStrategy:
        events = st.lists(self.event(), min_size=1, max_size=min(4, self.batch_events))
        return st.one_of(self.event(), st.builds(lambda e: {"events": e}, events))


def _string_keys(value: Any) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _string_keys(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_string_keys(v) for v in value)
    return True


def _has_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return any("\ud800" <= c <= "\udfff" for c in value)
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_surrogate(v) for v in value)
    return False


def _stamp(day: datetime.date, at: datetime.time, sep: str, precision: str, zone: str,
           zh: int, zm: int) -> str:
    clock = at.strftime("%H:%M") if precision == "min" else at.strftime("%H:%M:%S")
    if precision == "frac":
        clock += f".{at.microsecond:06d}"
    offset = zone if zone in "Zz" else f"{zone}{zh:02d}:{zm:02d}"
    return f"{day.isoformat()}{sep}{clock}{offset}"


def _no_zone(rules: Rules, e: dict, data: Any) -> dict:
    stamp = e["timestamp"]
    cut = len(stamp) - 1 if stamp[-1] in "Zz" else len(stamp) - 6
    return {**e, "timestamp": stamp[:cut]}


def _bad_date(rules: Rules, e: dict, data: Any) -> dict:
    day = data.draw(st.sampled_from(["2025-02-29", "2025-02-30", "2024-04-31", "2025-13-01", "2025-00-10",
                                     "2025-06-00", "2025-01-32"]))
    return {**e, "timestamp": day + e["timestamp"][10:]}


def _bad_time(rules: Rules, e: dict, data: Any) -> dict:
    clock = data.draw(st.sampled_from(["24:00", "25:10", "12:60", "99:99"]))
    return {**e, "timestamp": e["timestamp"][:11] + clock + e["timestamp"][16:]}


def _bad_zone(rules: Rules, e: dict, data: Any) -> dict:
    stamp = e["timestamp"]
    cut = len(stamp) - 1 if stamp[-1] in "Zz" else len(stamp) - 6
    zone = data.draw(st.sampled_from(["+25:00", "+02:61", "UTC", "+2", "Q", "+02:00:00"]))
    return {**e, "timestamp": stamp[:cut] + zone}


def _odd_digits(rules: Rules, e: dict, data: Any) -> dict:
    return {**e, "timestamp": "２０２５" + e["timestamp"][4:]}


def _not_a_date(rules: Rules, e: dict, data: Any) -> dict:
    value = data.draw(st.sampled_from(["", "yesterday", "1700000000", "2025-10-21", 1700000000, None]))
    return {**e, "timestamp": value}


def _missing(rules: Rules, e: dict, data: Any) -> dict:
    field = data.draw(st.sampled_from(TEXT_FIELDS + ("timestamp", "payload")))
    return {k: v for k, v in e.items() if k != field}


def _wrong_type(rules: Rules, e: dict, data: Any) -> dict:
    field = data.draw(st.sampled_from(TEXT_FIELDS + ("timestamp",)))
    return {**e, field: data.draw(st.sampled_from([1, 2.5, None, True, [], {}, ["x"]]))}


def _blank(rules: Rules, e: dict, data: Any) -> dict:
    field = data.draw(st.sampled_from(TEXT_FIELDS))
    return {**e, field: data.draw(st.sampled_from(["", " ", "\t\n", "\u3000"]))}


def _too_long(rules: Rules, e: dict, data: Any) -> dict:
    field = data.draw(st.sampled_from(TEXT_FIELDS))
    return {**e, field: "x" * (rules.field_chars + data.draw(st.integers(1, 3)))}


def _payload_not_object(rules: Rules, e: dict, data: Any) -> dict:
    return {**e, "payload": data.draw(st.sampled_from([None, 1, "s", [], [{}], True]))}


def _payload_too_big(rules: Rules, e: dict, data: Any) -> dict:
    return {**e, "payload": {"pad": "y" * (rules.payload_bytes * 2)}}


def _payload_nan(rules: Rules, e: dict, data: Any) -> dict:
    return {**e, "payload": {"x": data.draw(st.sampled_from([math.nan, math.inf, -math.inf]))}}


FAULTS = [_no_zone, _no_zone, _no_zone, _no_zone, _bad_date, _bad_time, _bad_zone, _odd_digits, _not_a_date,
          _missing, _wrong_type, _blank, _too_long, _payload_not_object, _payload_too_big, _payload_nan]
