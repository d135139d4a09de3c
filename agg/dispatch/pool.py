"""Routing a publish's events to the workers that own their partitions.

``WorkerPool.store`` splits the events by partition (``agg.ledger.Split``),
checks that each worker concerned has room (``agg.dispatch.window``), hands
each its parts through its ``Peer``, and puts the statuses back in the order
of the events. An edge reserves room for a body before reading it
(``reserve``), so that what it cannot take is refused before it is read.
"""

from __future__ import annotations

import asyncio
from typing import Any, Dict, List, Optional, Sequence, Tuple

import zmq.asyncio

from .. import protocol
from ..config import Config
from ..ledger import Split
from ..partition import PartitionCache, owner_of
from ..protocol import Event, Query, StoredRow
from .merge import merged_page
from .peer import Peer, PeerError, Unavailable
from .window import Window


# A request of this many events per worker or more is taken to reach every worker.
SPREAD = 4


class Overloaded(Exception):
    """Too much is in flight already; the caller should retry later."""


class Reservation:
    """Room held in every worker's window for a request whose body is being read."""

    def __init__(self, windows: List[Window], events: int, size: int) -> None:
        self.windows = windows
        self.events, self.size = events, size
        for window in windows:
            window.take(events, size)

    def release(self) -> None:
        for window in self.windows:
            window.give(self.events, self.size)
        self.windows = []


class WorkerPool:
    """Routes events to the worker that owns their partition."""

    def __init__(self, ctx: zmq.asyncio.Context, config: Config) -> None:
        limits = config.limits
        self.partition_of = PartitionCache(config.partitions)
        # Floor: a worker must always be able to hold two groups, or it idles between them.
        floor = 2 * config.storage.group_max_events
        self.peers = [Peer(ctx, endpoint, f"worker {i}", limits.stall_s,
                           Window(f"worker {i}", limits.max_inflight_events, limits.max_inflight_bytes,
                                  limits.queue_s, floor))
                      for i, endpoint in enumerate(config.worker_endpoints())]
        self.timeout = limits.ack_timeout_s

    def start(self) -> None:
        for peer in self.peers:
            peer.start()

    def close(self) -> None:
        for peer in self.peers:
            peer.close()

    def inflight(self) -> List[int]:
        return [peer.inflight_events for peer in self.peers]

    def owner(self, partition: int) -> int:
        return owner_of(partition, len(self.peers))

    def refusal(self, events: int, size: int) -> Optional[str]:
        """Why the workers have no room for a request of about ``events`` events
        and ``size`` bytes whose workers are not known yet, or None. A request of
        a few events may go to one worker only, so it is refused only when none
        has room for its share. A larger one goes to every worker (its events
        spread over the partitions), and is refused when any has no room: past
        its body, it would be refused anyway, after the front had read and
        decoded it for nothing (under overload, the most of the front's time)."""
        share, share_size = self._share(events, size)
        refused = [reason for reason in (peer.window.refusal(share, share_size) for peer in self.peers) if reason]
        if len(refused) == len(self.peers) or (refused and events >= SPREAD * len(self.peers)):
            return refused[0]
        return None

    def reserve(self, events: int, size: int) -> Reservation:
        """Room for such a request (its body is unread): its share in every
        window, or ``Overloaded`` (see ``refusal``)."""
        reason = self.refusal(events, size)
        if reason is not None:
            raise Overloaded(reason)
        return Reservation([peer.window for peer in self.peers], *self._share(events, size))

    def _share(self, events: int, size: int) -> Tuple[int, int]:
        """Each worker's part of a request whose workers are not known: (events, bytes), rounded up."""
        return -(-events // len(self.peers)), -(-size // len(self.peers))

    async def store(self, events: Sequence[Event], size: int) -> bytes:
        """Commit ``events`` (about ``size`` bytes in all); return one status byte
        per event (1 stored, 0 duplicate). ``Overloaded`` if a worker concerned
        has no room for its part."""
        split = Split(events, self.partition_of)
        by_worker = split.by_owner(self.owner)
        total = max(1, len(events))
        shares: Dict[int, Tuple[int, int]] = {}
        for w, parts in by_worker.items():
            count = sum(len(part.events) for part in parts)
            shares[w] = (count, size * count // total)
            refusal = self.peers[w].window.refusal(*shares[w])
            if refusal is not None:
                raise Overloaded(refusal)
        futures = [self.peers[w].submit(parts, shares[w][1], self.timeout) for w, parts in by_worker.items()]
        results: List[Any]
        if len(futures) == 1:  # one event, or one worker's: no gather to build and tear down
            try:
                results = [await futures[0]]
            except Exception as exc:
                results = [exc]
        else:
            results = await asyncio.gather(*futures, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                if isinstance(result, PeerError) and result.code in (protocol.ERR_INTERNAL, protocol.ERR_EXPIRED):
                    raise Unavailable(result.reason)
                raise result
        return split.gather(zip(by_worker.values(), results))

    async def page(self, topic: Optional[str], position: Dict[int, int],
                   limit: int) -> Tuple[List[StoredRow], Dict[int, int]]:
        """Up to ``limit`` events after ``position`` in processing order, and the
        position after them."""
        if topic is None:
            asked = list(range(len(self.peers)))
        else:
            asked = [self.owner(self.partition_of(topic))]

        async def fetch(w: int, after: Dict[int, int], count: int) -> List[StoredRow]:
            return await self.peers[w].request(protocol.QUERY, Query(topic, after, count), self.timeout,
                                               List[StoredRow])
        rows = await merged_page(fetch, asked, position, limit)
        after = dict(position)
        for row in rows:
            after[row.partition] = row.seq
        return rows, after
