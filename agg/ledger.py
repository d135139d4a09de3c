"""Scatter and gather: where a publish's events went, and their statuses back.

One publish travels: its events are split by partition (``Split``); each
worker's parts join those of the other requests of the same moment into one
message (``Ledger``, in the front or the ingest); a worker joins the parts of
every message it drained into one group per partition (``Ledger`` again),
commits each, and cuts each message's statuses back out; the front cuts each
request's statuses out of its message's answer, and ``Split`` puts them back
in the order of the request's events. Events move by the list, never one by
one, until that last step.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from .protocol import Event, Part

# (partition, start, count): where a part's events sit in its partition's joined list
Place = Tuple[int, int, int]


class Split:
    """One request's events by partition, remembering where each came from."""

    def __init__(self, events: Sequence[Event], partition_of: Callable[[str], int]) -> None:
        self.count = len(events)
        self.parts: Dict[int, List[Event]] = {}
        self.positions: Dict[int, List[int]] = {}
        for position, event in enumerate(events):
            p = partition_of(event.topic)
            part = self.parts.get(p)
            if part is None:
                part = self.parts[p] = []
                self.positions[p] = []
            part.append(event)
            self.positions[p].append(position)

    def by_owner(self, owner_of: Callable[[int], int]) -> Dict[int, List[Part]]:
        """The parts of each worker that owns some of them."""
        owners: Dict[int, List[Part]] = {}
        for p, events in self.parts.items():
            owners.setdefault(owner_of(p), []).append(Part(p, events))
        return owners

    def gather(self, answers: Iterable[Tuple[List[Part], bytes]]) -> bytes:
        """The statuses in the order of the request's events, from each worker's
        parts and their statuses (in the order of those parts)."""
        answers = list(answers)
        if len(self.parts) == 1:
            return answers[0][1]  # one partition: already in the request's order
        statuses = bytearray(self.count)
        for parts, answer in answers:
            start = 0
            for part in parts:
                for position, status in zip(self.positions[part.partition], answer[start:]):
                    statuses[position] = status
                start += len(part.events)
        return bytes(statuses)


class Ledger:
    """Several requests' parts joined into one list per partition; once those
    have their statuses, each request's statuses cut back out, in the order of
    its parts."""

    def __init__(self) -> None:
        self.joined: Dict[int, List[Event]] = {}
        self.places: List[List[Place]] = []
        self.events = 0

    def __len__(self) -> int:
        return len(self.places)

    def add(self, parts: Iterable[Part]) -> None:
        """One more request, as its parts."""
        place: List[Place] = []
        joined = self.joined
        for part in parts:
            events = joined.get(part.partition)
            if events is None:
                events = joined[part.partition] = []
            place.append((part.partition, len(events), len(part.events)))
            events.extend(part.events)
            self.events += len(part.events)
        self.places.append(place)

    def parts(self) -> List[Part]:
        """One part per partition, the requests' events in the order they came."""
        return [Part(p, events) for p, events in self.joined.items()]

    def split(self, statuses: bytes) -> Dict[int, bytes]:
        """The statuses of ``parts()`` (concatenated in that order), by partition."""
        out: Dict[int, bytes] = {}
        start = 0
        for p, events in self.joined.items():
            out[p] = statuses[start:start + len(events)]
            start += len(events)
        return out

    def statuses_of(self, request: int, statuses: Mapping[int, bytes]) -> bytes:
        """Request number ``request``'s statuses, from the statuses of each partition."""
        return b"".join(statuses[p][start:start + n] for p, start, n in self.places[request])

    def cut(self, statuses: Mapping[int, bytes]) -> List[bytes]:
        """Each request's statuses, from the statuses of each partition."""
        return [self.statuses_of(i, statuses) for i in range(len(self.places))]

    def failure(self, request: int, failed: Mapping[int, str]) -> Optional[str]:
        """Why request number ``request`` failed (one of its partitions did), or None."""
        return next((failed[p] for p, _start, _n in self.places[request] if p in failed), None)
