"""A worker's intake: what comes off its socket, checked, as named requests.

The front and the ingest validate and route, but a worker still refuses a
batch that is malformed or carries a topic of another partition (a peer with
another partition map, a bug): storing it would break dedup. A well-formed
STORE whose topics the worker knows is checked in C (a typed decode) and
against a cache of topics; anything else takes the slow path, which says
what is wrong. A flat BATCH, the form fronts and ingests sent before STORE,
is still taken, so that workers can be upgraded first.
"""

from __future__ import annotations

from typing import Any, List, NamedTuple, Sequence, Union

import msgspec

from . import protocol
from .partition import PartitionCache
from .protocol import Part, Query, StoreBody


class Store(NamedTuple):
    """Events to commit, by partition, for the peer ``rid``."""

    rid: bytes
    req_id: Any
    parts: List[Part]
    deadline: float  # time.time() after which nobody waits for the answer; 0: none

    @property
    def events(self) -> int:
        return sum(len(part.events) for part in self.parts)


class Ask(NamedTuple):
    """A page of events to read."""

    rid: bytes
    req_id: Any
    query: Query


class Refusal(NamedTuple):
    """Something that is not a request this worker takes, and why."""

    rid: bytes
    req_id: Any
    code: str
    reason: str


Request = Union[Store, Ask, Refusal]

_STORE = msgspec.msgpack.Decoder(StoreBody)


class Intake:
    """Reads requests for the worker that owns ``partitions`` of ``count``."""

    def __init__(self, index: int, partitions: Sequence[int], count: int, max_page: int) -> None:
        self.index = index
        self.partitions = list(partitions)
        self.owned = set(partitions)
        self.partition_of = PartitionCache(count)
        self.max_page = max_page

    def read(self, frames: List[bytes]) -> Request:
        """The request in ``frames`` (routing id first)."""
        rid, rest = frames[0], frames[1:]
        if len(rest) == 3 and rest[0] == protocol.VERSION and rest[1] == protocol.STORE:
            try:
                body = _STORE.decode(rest[2])
            except msgspec.DecodeError:
                pass
            else:
                if self.owns_all(body.parts):
                    return Store(rid, body.req_id, body.parts, body.deadline)
        req_id: Any = None
        try:
            kind, body = protocol.decode(rest)
            if not isinstance(body, list) or len(body) not in (2, 3):
                raise protocol.ProtocolError(protocol.ERR_INVALID, "body must be [req_id, data]")
            req_id, data = body[0], body[1]
            if kind == protocol.STORE:
                return Store(rid, req_id, self.check_parts(data), 0.0)
            if kind == protocol.BATCH:
                return Store(rid, req_id, self.check_parts(legacy_parts(data)), 0.0)
            if kind == protocol.QUERY:
                return Ask(rid, req_id, self.check_query(data))
            raise protocol.ProtocolError(protocol.ERR_INVALID, f"unknown kind {kind!r}")
        except protocol.ProtocolError as exc:
            return Refusal(rid, req_id, exc.code, exc.reason)

    def owns(self, partition: int, topic: str) -> bool:
        """Whether ``topic`` is in ``partition`` and that partition is this worker's."""
        return partition in self.owned and self.partition_of(topic) == partition

    def owns_all(self, parts: Sequence[Part]) -> bool:
        """Whether every event of ``parts`` is in the partition it came under, and
        that partition is this worker's. Topics are few: each is checked once."""
        owns = self.owns
        return all(owns(part.partition, topic) for part in parts
                   for topic in {event.topic for event in part.events})

    def check_parts(self, data: Any) -> List[Part]:
        """The parts of a STORE body, or ProtocolError if any event is malformed
        or is not this worker's (a peer with another partition map must not store it)."""
        try:
            parts = msgspec.convert(data, List[Part], strict=True, builtin_types=(bytes,))
        except msgspec.ValidationError as exc:
            raise protocol.ProtocolError(protocol.ERR_INVALID, f"malformed STORE body: {exc}") from None
        for part in parts:
            for topic in {event.topic for event in part.events}:
                if not self.owns(part.partition, topic):
                    raise protocol.ProtocolError(
                        protocol.ERR_INVALID, f"topic {topic!r} is not in partition {part.partition} of "
                                              f"worker {self.index}, which owns {self.partitions}")
        return parts

    def check_query(self, data: Any) -> Query:
        try:
            query = msgspec.convert(data, Query, strict=True)
        except msgspec.ValidationError as exc:
            raise protocol.ProtocolError(protocol.ERR_INVALID, f"bad query: {exc}") from None
        if query.limit < 1 or any(seq < 0 for seq in query.after.values()):
            raise protocol.ProtocolError(protocol.ERR_INVALID, "bad query: limit and positions")
        query.limit = min(query.limit, self.max_page)
        return query


def legacy_parts(events: Any) -> List[Any]:
    """The parts of a BATCH body from before STORE, ``[[partition, topic,
    event_id, timestamp, source, payload], ...]``: one part per event, so that
    the statuses come back in the events' order (the group joins parts of one
    partition anyway)."""
    if not isinstance(events, list) or not all(isinstance(ev, list) and ev for ev in events):
        raise protocol.ProtocolError(protocol.ERR_INVALID, "a BATCH body must be a list of events")
    return [[partition, [event]] for partition, *event in events]
