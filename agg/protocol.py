"""The wire contract between agg's processes and its native publishers.

No sockets here: only frames, kinds, and one encode/decode per kind.
Every message is a ZeroMQ multipart message whose first frames are::

    [VERSION, KIND, BODY]

``VERSION`` is ``b"agg1"``. ``KIND`` is one byte string below. ``BODY`` is one
msgpack value whose shape depends on the kind. A ROUTER socket adds the
peer's routing id in front; a PUB socket adds a topic frame in front
(``b"ctr.worker.3"``) so that subscribers filter on it.

Requests (publisher -> ingest, front/ingest -> worker or stats)::

    BATCH   b"B"  [req_id, [event_map, ...]]            (native publishers, see agg.ingest)
    STORE   b"W"  [req_id, [[partition, [[topic, event_id, timestamp, source, payload_json],
                  ...]], ...]]                          (to a worker: events by partition)
                  A worker also takes the BATCH that fronts and ingests sent it before
                  STORE: [req_id, [[partition, topic, event_id, timestamp, source,
                  payload_json], ...]].
    QUERY   b"Q"  [req_id, {"topic": str|None, "after": {partition: seq}, "limit": int}]
    STATS   b"S"  [req_id, {}]                          (to the stats process)

Replies::

    OK      b"K"  [req_id, result]
                  BATCH and STORE result: bytes, one byte per event in request
                  order, 1 = stored now, 0 = duplicate of an event stored before.
                  QUERY result: [[partition, seq, topic, event_id, timestamp,
                  source, payload_json, received_at], ...] in processing order.
    ERR     b"E"  [req_id, code, reason, [[index, field, reason], ...]]
                  code is one of the ERR_* strings below.

Control and counters::

    READY   b"R"  {"role": str, "index": int, "pid": int, "endpoint": str|None}
    COUNTERS b"C" {"worker": int, "pid": int, "owns": [p, ...],
                   "partitions": {p: [received, unique,
                   duplicates, {topic: [received, unique, duplicates]}]}, "time": float}
                  (absolute figures; only the partitions that changed, all on a heartbeat)
    FRONT   b"F"  {"pid": int, "role": str, "rejected": {reason: count}, "time": float}
    SUPER   b"P"  {"pid": int, "restarts": {child: count}, "time": float}
"""

from __future__ import annotations

import datetime
from typing import Any, List, Optional, Sequence, Tuple

import msgpack
import msgspec

VERSION = b"agg1"

BATCH = b"B"
STORE = b"W"
QUERY = b"Q"
STATS = b"S"
OK = b"K"
ERR = b"E"
READY = b"R"
COUNTERS = b"C"
FRONT = b"F"
SUPER = b"P"
ALIVE = b"A"

# Error codes carried by ERR replies.
ERR_INVALID = "invalid"          # the request or an event in it is malformed
ERR_VERSION = "version"          # unknown envelope version
ERR_OVERLOAD = "overload"        # try again later; nothing of the batch was acknowledged
ERR_UNAVAILABLE = "unavailable"  # a worker is down or did not answer in time
ERR_TOO_LARGE = "too_large"      # the message is larger than the configured limit
ERR_INTERNAL = "internal"        # a bug or a failing disk; the batch was not acknowledged

STORED = 1
DUPLICATE = 0

# Topic prefixes of counter snapshots on PUB/SUB.
TOPIC_WORKER = b"ctr.worker."
TOPIC_FRONT = b"ctr.front."
TOPIC_SUPER = b"ctr.supervisor"
TOPIC_ALL = b"ctr."


class ProtocolError(Exception):
    """A message that does not follow this contract."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def utc_stamp() -> str:
    """Now, in the form of an event's ``received_at``, which sorts as text."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# msgspec writes the same bytes as msgpack.packb(use_bin_type=True), 2-4 times faster.
_ENCODER = msgspec.msgpack.Encoder()


def pack(value: Any) -> bytes:
    return _ENCODER.encode(value)


def unpack(data: bytes) -> Any:
    # strict_map_key=False: partition numbers are integer map keys.
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def encode(kind: bytes, body: Any) -> List[bytes]:
    return [VERSION, kind, pack(body)]


def decode(frames: Sequence[bytes]) -> Tuple[bytes, Any]:
    """Return ``(kind, body)`` of ``[VERSION, KIND, BODY]`` or raise ProtocolError."""
    if len(frames) != 3:
        raise ProtocolError(ERR_INVALID, f"expected 3 frames (version, kind, body), got {len(frames)}")
    version, kind, body = frames
    if bytes(version) != VERSION:
        raise ProtocolError(ERR_VERSION, f"unknown envelope version {bytes(version)[:16]!r}, "
                                         f"this agg speaks {VERSION!r}")
    try:
        return bytes(kind), unpack(body)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(ERR_INVALID, f"body is not valid msgpack: {exc}") from None


def encode_ok(req_id: Any, result: Any) -> List[bytes]:
    return encode(OK, [req_id, result])


def encode_err(req_id: Any, code: str, reason: str,
               errors: Optional[List[List[Any]]] = None) -> List[bytes]:
    return encode(ERR, [req_id, code, reason, errors or []])


def split_reply(kind: bytes, body: Any) -> Tuple[Any, bool, Any]:
    """``(req_id, ok, payload)`` of an OK or ERR body; payload is the result or
    ``(code, reason, errors)``."""
    if kind == OK and isinstance(body, list) and len(body) == 2:
        return body[0], True, body[1]
    if kind == ERR and isinstance(body, list) and len(body) == 4:
        return body[0], False, (body[1], body[2], body[3])
    raise ProtocolError(ERR_INVALID, f"not a reply: kind {kind!r}")
