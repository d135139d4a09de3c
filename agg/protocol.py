"""The wire contract between agg's processes and its native publishers.

No sockets here: only frames, kinds, the shapes that cross a process, and
one encode/decode per kind. Every message is a ZeroMQ multipart message::

    [VERSION, KIND, BODY]

``VERSION`` is ``b"agg1"``. ``KIND`` is one byte below. ``BODY`` is one
msgpack value whose shape depends on the kind. A ROUTER socket adds the
peer's routing id in front; a PUB socket adds a topic frame in front
(``b"ctr.worker.3"``) so that subscribers filter on it.

Requests (publisher -> ingest, front/ingest -> worker or stats)::

    BATCH   b"B"  [req_id, [event_map, ...]]          (native publishers, see agg.ingest)
    STORE   b"W"  StoreBody: [req_id, [Part, ...], deadline]  (to a worker: events by partition;
                  Part = [partition, [Event, ...]], Event = [topic, event_id, timestamp,
                  source, payload]; deadline: the time.time() after which the sender no
                  longer waits, 0 for none; a body without it has none)
                  A worker also takes the flat BATCH that fronts and ingests sent it before
                  STORE: [req_id, [[partition, topic, event_id, timestamp, source,
                  payload], ...]].
    QUERY   b"Q"  [req_id, Query]                     Query = {"topic", "after": {partition: seq},
                                                       "limit"}
    STATS   b"S"  [req_id, {}]                        (to the stats process)
    CTL     b"O"  [req_id, CtlCommand]                (``agg ctl`` to the supervisor's
                                                       endpoints.ctl; answered OK with a
                                                       CtlAnswer, or ERR)

Replies::

    OK      b"K"  [req_id, result]
                  BATCH and STORE result: bytes, one byte per event in request
                  order, 1 (STORED) = stored now, 0 (DUPLICATE) = stored before.
                  QUERY result: [StoredRow, ...] in processing order.
    ERR     b"E"  [req_id, code, reason, [[index, field, reason], ...]]
                  code is one of the ERR_* strings below.
    BUSY    b"U"  [req_id]  a worker still at work on this request (a large page, a
                  long commit): the request is not lost, its answer will come.

Control and counters (PUB topic first; absolute figures, so a lost one heals)::

    READY   b"R"  Ready {"role", "index", "pid", "endpoint"}      (to the supervisor)
    ALIVE   b"A"  {"pid"}                                         (to the supervisor)
    COUNTERS b"C" WorkerSnapshot (topic ctr.worker.N): the partitions that changed,
                  all of them on a heartbeat
    EDGE    b"F"  EdgeSnapshot (topic ctr.edge.PID): a front's or an ingest's rejects
                  and events in flight per worker
    SUPER   b"P"  SupervisorSnapshot (topic ctr.supervisor): restarts, children down
"""

from __future__ import annotations

import datetime
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, TypeVar

import msgpack
import msgspec

VERSION = b"agg1"

BATCH = b"B"
STORE = b"W"
QUERY = b"Q"
STATS = b"S"
CTL = b"O"
OK = b"K"
ERR = b"E"
BUSY = b"U"
READY = b"R"
ALIVE = b"A"
COUNTERS = b"C"
EDGE = b"F"
SUPER = b"P"

# Error codes carried by ERR replies.
ERR_INVALID = "invalid"          # the request or an event in it is malformed
ERR_VERSION = "version"          # unknown envelope version
ERR_OVERLOAD = "overload"        # try again later; nothing of the batch was acknowledged
ERR_UNAVAILABLE = "unavailable"  # a worker is down or did not answer in time
ERR_EXPIRED = "expired"          # its deadline passed before a worker began it; not stored
ERR_INTERNAL = "internal"        # a failing disk (or a bug); the batch was not acknowledged

STORED = 1
DUPLICATE = 0

# Topic prefixes of counter snapshots on PUB/SUB.
TOPIC_WORKER = b"ctr.worker."
TOPIC_EDGE = b"ctr.edge."
TOPIC_EDGE_BEFORE = b"ctr.front."  # what edges sent before they were called edges
TOPIC_SUPER = b"ctr.supervisor"
TOPIC_ALL = b"ctr."


# -- the shapes that cross a process -----------------------------------------------------
# array_like: a Struct is written as the msgpack array of its fields, the same bytes
# as the list it names. gc=False: none can be part of a cycle.

class Event(msgspec.Struct, array_like=True, gc=False):
    """A valid event on its way to a worker; ``payload`` is its JSON text."""

    topic: str
    event_id: str
    timestamp: str
    source: str
    payload: bytes


class Part(msgspec.Struct, array_like=True, gc=False):
    """The events of one request that belong to one partition, in request order."""

    partition: int
    events: List[Event]


class StoreBody(msgspec.Struct, array_like=True, gc=False):
    req_id: Any
    parts: List[Part]
    deadline: float = 0.0


class StoredRow(msgspec.Struct, array_like=True, gc=False):
    """An event as a shard keeps it, with where and when it was committed."""

    partition: int
    seq: int
    topic: str
    event_id: str
    timestamp: str
    source: str
    payload: bytes
    received_at: str


def processing_order(row: StoredRow) -> Tuple[str, int, int]:
    """The order of GET /events: commit time, then partition, then place in it."""
    return (row.received_at, row.partition, row.seq)


class Query(msgspec.Struct, gc=False):
    topic: Optional[str] = None
    after: Dict[int, int] = {}
    limit: int = 1000


class Counts(msgspec.Struct, array_like=True, gc=False):
    """What reached a worker, split into new events and duplicates."""

    received: int = 0
    unique: int = 0
    duplicates: int = 0

    def __add__(self, other: "Counts") -> "Counts":
        return Counts(self.received + other.received, self.unique + other.unique,
                      self.duplicates + other.duplicates)


class PartitionCounts(msgspec.Struct, array_like=True, gc=False):
    """A partition's totals, then its counts per topic."""

    received: int
    unique: int
    duplicates: int
    topics: Dict[str, Counts]

    @property
    def counts(self) -> Counts:
        return Counts(self.received, self.unique, self.duplicates)


class WorkerSnapshot(msgspec.Struct, gc=False):
    worker: int
    pid: int
    owns: List[int]
    storage_error: Optional[str]
    time: float
    partitions: Dict[int, PartitionCounts]


class EdgeSnapshot(msgspec.Struct, gc=False):
    pid: int
    role: str
    rejected: Dict[str, int]
    inflight: List[int]
    time: float
    # What the edge took and refused since it started, by name (the ingest's
    # "batches", "events", "refused_overload", "refused_unavailable"); absent from older edges.
    counted: Dict[str, int] = {}


class SupervisorSnapshot(msgspec.Struct, gc=False):
    pid: int
    time: float
    restarts: Dict[str, int]
    down: List[str] = []


class CtlCommand(msgspec.Struct, gc=False):
    """``agg ctl``'s request: ``status``, ``restart`` (of ``child``) or ``stop``."""

    command: str
    child: str = ""


class ChildStatus(msgspec.Struct, gc=False):
    """One child as the supervisor sees it; state is up, starting, restarting or down."""

    name: str
    pid: Optional[int]
    uptime: float
    restarts: int
    state: str


class CtlAnswer(msgspec.Struct, gc=False):
    message: str
    pid: int  # the supervisor's
    children: List[ChildStatus] = []


class Ready(msgspec.Struct, gc=False):
    role: str
    index: int
    pid: int
    endpoint: Optional[str]


class Alive(msgspec.Struct, gc=False):
    pid: int


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


T = TypeVar("T")


def unpack_as(data: bytes, shape: Type[T]) -> T:
    """``data`` decoded as ``shape``, or ProtocolError saying what does not fit."""
    try:
        return msgspec.msgpack.decode(data, type=shape)
    except msgspec.DecodeError as exc:
        raise ProtocolError(ERR_INVALID, f"body is not a {getattr(shape, '__name__', shape)}: {exc}") from None


# A body ``[req_id, rest]``, the rest left encoded: for whoever knows its shape.
_HEAD = msgspec.msgpack.Decoder(Tuple[Any, msgspec.Raw])


def split_head(body: bytes) -> Tuple[Any, msgspec.Raw]:
    """``(req_id, rest)`` of a ``[req_id, rest]`` body, ``rest`` still encoded;
    ProtocolError if it is not of that form."""
    try:
        return _HEAD.decode(body)
    except msgspec.DecodeError as exc:
        raise ProtocolError(ERR_INVALID, f"not a [req_id, body] message: {exc}") from None


def request_id(body: bytes) -> Any:
    """The request id of a ``[req_id, ...]`` body, or None if it has none. Read
    from the body's start alone, so that an error about a body cut short or not
    of the right shape still carries the id its sender can match."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=max(len(body), 1))
    try:
        unpacker.feed(body)
        if unpacker.read_array_header() < 1:
            return None
        return unpacker.unpack()
    except Exception:  # msgpack raises several unrelated types; no id then
        return None


def encode(kind: bytes, body: Any) -> List[bytes]:
    return [VERSION, kind, pack(body)]


def check_envelope(frames: Sequence[bytes]) -> bytes:
    """The kind of ``[VERSION, KIND, BODY]``, or ProtocolError."""
    if len(frames) != 3:
        raise ProtocolError(ERR_INVALID, f"expected 3 frames (version, kind, body), got {len(frames)}")
    version = bytes(frames[0])
    if version != VERSION:
        shown = version[:16].decode("ascii", "replace")
        raise ProtocolError(ERR_VERSION, f"unknown envelope version '{shown}', this agg speaks "
                                         f"'{VERSION.decode()}'")
    return bytes(frames[1])


def decode(frames: Sequence[bytes]) -> Tuple[bytes, Any]:
    """Return ``(kind, body)`` of ``[VERSION, KIND, BODY]`` or raise ProtocolError."""
    kind = check_envelope(frames)
    try:
        return kind, unpack(frames[2])
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
    raise ProtocolError(ERR_INVALID, f"not a reply: kind '{kind.decode('ascii', 'replace')}'")
