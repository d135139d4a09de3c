"""What an event is, and the one validation shared by the front and the ingest.

An event is a mapping with five fields::

    topic      non-blank string, at most limits.max_field_chars characters
    event_id   same rules; (topic, event_id) identifies the event
    timestamp  ISO 8601 date and time *with* a zone (Z or +hh:mm), kept as given
    source     same rules as topic
    payload    an object (JSON object / msgpack map with string keys), at most
               limits.max_payload_bytes once encoded as JSON

Other fields are ignored. ``validate_batch`` returns each event as a
``protocol.Event`` (its payload as JSON text) ready for the wire, or raises
``InvalidEvents`` listing every problem (index, field, reason), so that a
request is refused whole and the publisher learns all that is wrong at once.
"""

from __future__ import annotations

import datetime
import math
import re
from itertools import compress, repeat
from operator import add, itemgetter
from typing import Annotated, Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import msgspec
import orjson

from .config import Config
from .protocol import Event

FIELDS = ("topic", "event_id", "timestamp", "source", "payload")

# Deepest nesting of objects and arrays in a payload. Beyond sanity, and below
# what every JSON library here can write back (orjson stops at 254).
MAX_PAYLOAD_DEPTH = 64

# Most errors reported for one request; the rest are summarised by a count.
MAX_REPORTED_ERRORS = 100

# ASCII digits only: Python's \d also matches "２" and int() reads it.
_TIMESTAMP = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:[.,][0-9]{1,9})?)?"
    r"(?:[Zz]|([+-])([0-9]{2}):?([0-9]{2}))\Z"
)

# The fast path's stricter pattern: ranges of month, day, hour, minute, second and
# zone are in the pattern, so only a day past the 28th needs a calendar check.
# PERF: it runs on every event: no capturing groups, no \d.
_STRICT_TIMESTAMP = (
    r"^[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])[Tt ](?:[01][0-9]|2[0-3]):[0-5][0-9]"
    r"(?::[0-5][0-9](?:[.,][0-9]{1,9})?)?(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):?[0-5][0-9])\Z")

_STRICT_MATCH = re.compile(_STRICT_TIMESTAMP).match
_DAY = itemgetter(slice(8, 10))  # the day of a timestamp that matched _STRICT_TIMESTAMP


class Limits(NamedTuple):
    max_field_chars: int = 256
    max_payload_bytes: int = 64 * 1024
    max_batch_events: int = 10000

    @classmethod
    def from_config(cls, config: Config) -> "Limits":
        return cls(config.limits.max_field_chars, config.limits.max_payload_bytes,
                   config.limits.max_batch_events)


class EventError(NamedTuple):
    index: Optional[int]  # type: ignore[assignment]  # shadows tuple.index, on purpose
    field: Optional[str]
    reason: str

    def to_json(self) -> dict:
        out: dict = {}
        if self.index is not None:
            out["index"] = self.index
        if self.field is not None:
            out["field"] = self.field
        out["message"] = self.reason
        return out


class InvalidEvents(Exception):
    """One or more events of a request are invalid; nothing of it may be stored."""

    def __init__(self, errors: List[EventError], total: Optional[int] = None) -> None:
        self.errors = errors[:MAX_REPORTED_ERRORS]
        self.total = len(errors) if total is None else total
        first = errors[0]
        where = f"event {first.index}: " if first.index is not None else ""
        what = f"{first.field}: " if first.field else ""
        more = f" (and {self.total - 1} more)" if self.total > 1 else ""
        super().__init__(f"{where}{what}{first.reason}{more}")


def check_timestamp(value: str) -> Optional[str]:
    """Return why ``value`` is not an ISO 8601 timestamp with a zone, or None."""
    match = _TIMESTAMP.match(value)
    if match is None:
        return ("must be an ISO 8601 date and time with a time zone, "
                "like 2025-10-21T14:30:00Z or 2025-10-21T14:30:00+02:00")
    year, month, day, hour, minute, second, _sign, zh, zm = match.groups()
    try:
        datetime.datetime(int(year), int(month), int(day), int(hour), int(minute),
                          int(second or 0))
    except ValueError as exc:
        return f"is not a valid date and time: {exc}"
    if zh is not None and (int(zh) > 23 or int(zm) > 59):
        return "has an invalid time zone offset"
    return None


def _check_string(value: Any, limit: int) -> Optional[str]:
    if not isinstance(value, str):
        return f"must be a string, got {_type_name(value)}"
    if not value or value.isspace():
        return "must not be empty"
    if len(value) > limit:
        return f"must be at most {limit} characters, got {len(value)}"
    return None


def _brackets(payload_json: bytes) -> int:
    """An upper bound of the nesting depth, cheap to compute on the JSON text."""
    return payload_json.count(b"{") + payload_json.count(b"[")


def _depth(value: Any) -> int:
    """The nesting depth of objects and arrays, without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children)
    return deepest


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_non_finite(v) for v in value)
    return False


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _timestamp_problem(timestamp: Any) -> Optional[str]:
    if not isinstance(timestamp, str):
        return f"must be a string, got {_type_name(timestamp)}"
    if len(timestamp) > 64:
        return "must be at most 64 characters"
    return check_timestamp(timestamp)


def _payload_json(payload: Any, limits: Limits) -> Tuple[bytes, Optional[str]]:
    """The payload as JSON text, or why it cannot be one."""
    if not isinstance(payload, dict):
        return b"", f"must be an object, got {_type_name(payload)}"
    try:
        payload_json = orjson.dumps(payload)
    except (TypeError, orjson.JSONEncodeError) as exc:
        return b"", f"cannot be encoded as JSON: {exc}"
    # orjson writes NaN and Infinity (possible in msgpack, not in JSON) as null:
    # refuse them rather than store something else than was sent.
    if b"null" in payload_json and _has_non_finite(payload):
        return b"", "NaN and Infinity are not JSON numbers"
    if _brackets(payload_json) > MAX_PAYLOAD_DEPTH and _depth(payload) > MAX_PAYLOAD_DEPTH:
        return b"", f"must be nested at most {MAX_PAYLOAD_DEPTH} levels deep"
    if len(payload_json) > limits.max_payload_bytes:
        return b"", f"must be at most {limits.max_payload_bytes} bytes as JSON, got {len(payload_json)}"
    return payload_json, None


def validate_event(event: Any, limits: Limits, index: Optional[int],
                   errors: List[EventError]) -> Optional[Event]:
    """Validate one event; append its problems to ``errors``; return its wire form.
    Every problem is listed: a missing field does not hide a bad one beside it."""
    if not isinstance(event, dict):
        errors.append(EventError(index, None, f"an event must be an object, got {_type_name(event)}"))
        return None
    start = len(errors)
    problems: Dict[str, Optional[str]] = {}
    for field in ("topic", "event_id", "source"):
        if field in event:
            problems[field] = _check_string(event[field], limits.max_field_chars)
    if "timestamp" in event:
        problems["timestamp"] = _timestamp_problem(event["timestamp"])
    payload_json = b""
    if "payload" in event:
        payload_json, problems["payload"] = _payload_json(event["payload"], limits)
    for field in FIELDS:  # in the fields' order, whatever the order of the checks
        problem = problems.get(field) if field in event else "is required"
        if problem:
            errors.append(EventError(index, field, problem))
    if len(errors) > start:
        return None
    return Event(event["topic"], event["event_id"], event["timestamp"], event["source"], payload_json)


def validate_batch(items: Sequence[Any], limits: Limits, single: bool = False) -> List[Event]:
    """Validate every event of a request; raise InvalidEvents naming each problem."""
    if len(items) > limits.max_batch_events:
        raise InvalidEvents([EventError(None, "events", f"a batch holds at most "
                                        f"{limits.max_batch_events} events, got {len(items)}")])
    if not items:
        raise InvalidEvents([EventError(None, "events", "the batch is empty")])
    errors: List[EventError] = []
    out: List[Event] = []
    for index, item in enumerate(items):
        wire = validate_event(item, limits, None if single else index, errors)
        if wire is not None:
            out.append(wire)
    if errors:
        raise InvalidEvents(errors)
    return out


def _event_struct(limits: Limits, payload_type: Any) -> Any:
    text = Annotated[str, msgspec.Meta(min_length=1, max_length=limits.max_field_chars)]
    # PERF: the timestamp's pattern is checked after, a column at a time (_fast_columns),
    # not by msgspec's own pattern check, which calls re once per value.
    stamp = Annotated[str, msgspec.Meta(max_length=64)]
    # PERF: gc=False, so that a batch of 1,000 does not set off the young generation's
    # collection. Safe: an event holds strings and a freshly decoded payload, which
    # cannot point back at it, so it is never part of a cycle.
    return msgspec.defstruct("Event", [("topic", text), ("event_id", text), ("timestamp", stamp),
                                       ("source", text), ("payload", payload_type)], gc=False)


def _is_date(text: str) -> bool:
    """Whether ``YYYY-MM-DD`` (in the strict pattern's form) is a day of the calendar."""
    try:
        datetime.date(int(text[:4]), int(text[5:7]), int(text[8:10]))
    except ValueError:
        return False
    return True


def _fast_columns(items: Sequence[Any], payloads: List[bytes], max_payload: int) -> Optional[List[Event]]:
    """The wire form of decoded ``items``, given their payloads as JSON, if they
    pass what the C pass did not check: blank strings, the timestamp's form and
    a day past the month's end, each payload an object of at most ``max_payload`` bytes and shallow
    enough. None if any fails (the slow path then says which and why).
    Column by column, so that each check is one C loop over the batch
    (map of a method) rather than Python code per event."""
    topics = [e.topic for e in items]
    ids = [e.event_id for e in items]
    stamps = [e.timestamp for e in items]
    sources = [e.source for e in items]
    if (any(map(str.isspace, topics)) or any(map(str.isspace, ids)) or any(map(str.isspace, sources))
            or max(map(len, payloads), default=0) > max_payload
            or not all(map(bytes.startswith, payloads, repeat(b"{")))
            or max(map(add, map(bytes.count, payloads, repeat(b"{")),
                       map(bytes.count, payloads, repeat(b"["))), default=0) > MAX_PAYLOAD_DEPTH
            or not all(map(_STRICT_MATCH, stamps))
            or (max(map(_DAY, stamps), default="") > "28"
                and not all(map(_is_date, {t[:10] for t in stamps if t[8:10] > "28"})))):
        return None
    return list(map(Event, topics, ids, stamps, sources, payloads))


class FastJsonDecoder:
    """Decode and validate a POST /publish body in one pass of C (msgspec), for
    the common case of a valid request. It answers None whenever anything is
    off, never an error: the caller then takes the slow path (orjson and
    ``validate_batch``), which names every problem. So the fast path can only
    accept what the slow path accepts, and error messages come from one place.
    The payload is kept as the JSON text the publisher sent (msgspec.Raw),
    which saves decoding and encoding it again."""

    def __init__(self, limits: Limits) -> None:
        # Anything msgspec raises (invalid UTF-8, deep nesting, ...) sends the request
        # to the slow path, which explains the problem; the fast path never answers errors.
        self.errors = (Exception,)
        event = _event_struct(limits, msgspec.Raw)
        events = Annotated[List[event], msgspec.Meta(min_length=1,  # type: ignore[valid-type]
                                                     max_length=limits.max_batch_events)]
        # "topic" beside "events" makes the body one event (see events_of_body): slow path.
        batch = msgspec.defstruct("Batch", [("events", events), ("topic", Any, None)])
        self.one = msgspec.json.Decoder(event)
        self.many = msgspec.json.Decoder(batch)
        self.max_payload = limits.max_payload_bytes

    def decode(self, raw: bytes) -> Optional[List[Event]]:
        # PERF: the likely shape first, since a failed decode raises (costly). A body
        # without "events" is not a batch (unless it spells the key with escapes,
        # which the second try catches).
        try:
            items = self._batch(raw) if b'"events"' in raw else [self.one.decode(raw)]
        except self.errors:
            try:
                items = [self.one.decode(raw)] if b'"events"' in raw else self._batch(raw)
            except self.errors:
                return None
        if items is None:
            return None
        payloads = [bytes(e.payload) for e in items]
        for payload in compress(payloads, [not p.isascii() for p in payloads]):
            try:  # msgspec checks the syntax of a Raw value, not its UTF-8
                payload.decode("utf-8")
            except UnicodeDecodeError:
                return None
        return _fast_columns(items, payloads, self.max_payload)

    def _batch(self, raw: bytes) -> Optional[List[Any]]:
        batch: Any = self.many.decode(raw)
        return None if batch.topic is not None else batch.events


class FastMsgpackDecoder:
    """The same for the native ingest's BATCH body ``[req_id, [event, ...]]``:
    ``(req_id, events)`` when all is valid, else None (take the slow path)."""

    def __init__(self, limits: Limits) -> None:
        # Anything msgspec raises (invalid UTF-8, deep nesting, ...) sends the request
        # to the slow path, which explains the problem; the fast path never answers errors.
        self.errors = (Exception,)
        event = _event_struct(limits, Dict[str, Any])
        events = Annotated[List[event], msgspec.Meta(min_length=1,  # type: ignore[valid-type]
                                                     max_length=limits.max_batch_events)]
        self.decoder = msgspec.msgpack.Decoder(Tuple[Any, events])
        self.max_payload = limits.max_payload_bytes

    def decode(self, body: bytes) -> Optional[Tuple[Any, List[Event]]]:
        try:
            # Any: the element type is a Struct class built at run time from the limits.
            decoded: Any = self.decoder.decode(body)
        except self.errors:
            return None
        req_id, items = decoded
        dumps = orjson.dumps
        try:
            # msgspec turns a msgpack timestamp into a datetime, which orjson would
            # write as a string; the slow path refuses it (no JSON form), so here too.
            payloads = [dumps(e.payload, option=orjson.OPT_PASSTHROUGH_DATETIME) for e in items]
        except (TypeError, orjson.JSONEncodeError):
            return None
        # orjson writes NaN and infinities as null, which the slow path refuses. A null
        # is rare: one search of the whole batch, then a look at each payload if found.
        if b"null" in b"".join(payloads):
            for i in compress(range(len(payloads)), [b"null" in p for p in payloads]):
                if _has_non_finite(items[i].payload):
                    return None
        events = _fast_columns(items, payloads, self.max_payload)
        return None if events is None else (req_id, events)


def events_of_body(body: Any) -> Tuple[Sequence[Any], bool]:
    """Return ``(events, single)`` of a publish body: one event or {"events": [...]}."""
    if isinstance(body, dict) and "events" in body and "topic" not in body:
        events = body["events"]
        if not isinstance(events, list):
            raise InvalidEvents([EventError(None, "events",
                                            f"must be an array, got {_type_name(events)}")])
        return events, False
    if isinstance(body, dict):
        return [body], True
    raise InvalidEvents([EventError(None, None, "the body must be one event object or "
                                                f'{{"events": [...]}}, got {_type_name(body)}')])
