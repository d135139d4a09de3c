"""Talking to the workers (and the stats process) from an asyncio process.

Used by the front and the ingest; they share the same routing and the same
back-pressure so that both paths keep the same promises.

``Peer`` is one DEALER connected to one ROUTER (a worker or the stats
process): many requests in flight, each matched to its reply by request id,
each with a timeout. ``WorkerPool`` routes events by partition to their
worker's ``Peer`` and merges the answers.

Back-pressure, so that memory stays bounded and overload is said, not hidden:
- a worker with more than ``limits.max_inflight_events`` unacknowledged
  events gets no more: ``Overloaded`` (503 / ERR overload);
- a worker that is not connected (``IMMEDIATE``: nothing is queued for a
  peer that is not there): ``Unavailable`` at once;
- a worker that does not answer within ``limits.ack_timeout_s``:
  ``Unavailable``. Whatever it did commit is a duplicate when resent.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

import zmq
import zmq.asyncio

from . import protocol
from .events import WireEvent
from .partition import PartitionCache, owner_of

log = logging.getLogger("agg.dispatch")


class Unavailable(Exception):
    """A peer is down or did not answer in time; nothing is acknowledged."""


class Overloaded(Exception):
    """Too much is in flight already; the caller should retry later."""


class PeerError(Exception):
    """A peer answered ERR."""

    def __init__(self, code: str, reason: str, errors: Any = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.errors = errors or []


class Peer:
    """One DEALER to one ROUTER, with request ids and timeouts."""

    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str, name: str,
                 stall_s: Optional[float] = None) -> None:
        self.endpoint = endpoint
        self.name = name
        self.stall_s = stall_s
        self.stalled = False
        self.last_heard = 0.0  # when it last answered, or began to owe an answer
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        # Queue nothing for a peer that is not connected: fail fast instead.
        self.sock.setsockopt(zmq.IMMEDIATE, 1)
        self.sock.setsockopt(zmq.SNDHWM, 100000)
        self.sock.setsockopt(zmq.RCVHWM, 100000)
        self.sock.setsockopt(zmq.RECONNECT_IVL, 50)
        self.sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        self.sock.connect(endpoint)
        self.ids = itertools.count(1)
        self.pending: Dict[int, asyncio.Future] = {}
        self.inflight_events = 0
        # Batches submitted during one turn of the event loop go out as one message.
        self.outbox: List[Tuple[List[Tuple[int, List[WireEvent]]], int, asyncio.Future]] = []
        self.outbox_events = 0
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.tasks: List[asyncio.Task] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self._receive()), loop.create_task(self._watch())]
        if self.stall_s:
            self.tasks.append(loop.create_task(self._watch_stall(self.stall_s)))

    async def _watch_stall(self, stall_s: float) -> None:
        """A peer that owes answers and has said nothing for ``stall_s`` (stopped,
        hung, stuck on a disk) fails what it holds now, and what comes next until
        it speaks again: publishers get 503 at once instead of at the ack timeout.
        What it later commits of those requests is a duplicate when resent.
        After ``stall_s`` with nothing owed, one request may try again (a restarted
        worker will never answer the requests its predecessor took)."""
        loop = asyncio.get_running_loop()
        stalled_since = 0.0
        while True:
            await asyncio.sleep(stall_s / 10)  # detection at most 10% late
            now = loop.time()
            if self.pending and now - self.last_heard > stall_s:
                if not self.stalled:
                    log.warning("%s has not answered for %.0f ms; failing %d requests",
                                self.name, (now - self.last_heard) * 1000, len(self.pending))
                    self.stalled = True
                    stalled_since = now
                self._fail_pending(f"{self.name} has not answered for {stall_s * 1000:.0f} ms")
            elif self.stalled and not self.pending and now - stalled_since > stall_s:
                self.stalled = False

    def _fail_pending(self, reason: str) -> None:
        for future in self.pending.values():
            if not future.done():
                future.set_exception(Unavailable(reason))

    async def _watch(self) -> None:
        """A peer that disconnects (a worker killed, say) will never answer what
        it holds: fail those requests now rather than at their timeout."""
        while True:
            await self.monitor.recv_multipart()
            if self.pending:
                log.warning("%s disconnected with %d requests in flight", self.name, len(self.pending))
            self._fail_pending(f"{self.name} disconnected before answering")

    async def _receive(self) -> None:
        while True:
            frames = await self.sock.recv_multipart()
            try:
                kind, body = protocol.decode(frames)
                req_id, ok, payload = protocol.split_reply(kind, body)
            except protocol.ProtocolError as exc:
                log.warning("bad reply from %s: %s", self.name, exc)
                continue
            self.last_heard = asyncio.get_running_loop().time()
            self.stalled = False
            future = self.pending.pop(req_id, None)
            if future is None or future.done():
                continue  # the request timed out already; its caller has answered
            if ok:
                future.set_result(payload)
            else:
                future.set_exception(PeerError(*payload))

    def stalled_error(self) -> Unavailable:
        return Unavailable(f"{self.name} is stalled: it has not answered for over "
                           f"{(self.stall_s or 0) * 1000:.0f} ms")

    def _send(self, kind: bytes, data: Any) -> Tuple[int, asyncio.Future]:
        """Send one request now and register the future its reply will resolve:
        (request id, future). Unavailable if no peer is connected; another
        failure of the send is raised as it is."""
        req_id = next(self.ids)
        # NOBLOCK: the send happens now or fails now, so the returned future is done.
        sent: Any = self.sock.send_multipart(protocol.encode(kind, [req_id, data]), flags=zmq.NOBLOCK)
        failure = sent.exception()
        if isinstance(failure, zmq.Again):
            raise Unavailable(f"{self.name} is not connected")
        if failure is not None:
            raise failure
        loop = asyncio.get_running_loop()
        if not self.pending:
            self.last_heard = loop.time()  # the clock of silence starts with the first debt
        future = loop.create_future()
        self.pending[req_id] = future
        return req_id, future

    async def request(self, kind: bytes, data: Any, timeout: float) -> Any:
        """Send one request (a query) and wait for its reply."""
        if self.stalled:
            raise self.stalled_error() from None
        req_id, future = self._send(kind, data)
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise Unavailable(f"{self.name} did not answer within {timeout:g} s") from None
        finally:
            self.pending.pop(req_id, None)

    def submit(self, parts: List[Tuple[int, List[WireEvent]]], count: int,
               timeout: float) -> "asyncio.Future[bytes]":
        """Queue ``parts`` (``count`` events, by partition) for this worker; they
        leave, with every other request submitted in the same turn of the event
        loop, as one STORE message, so that many small requests cost the worker
        one group and the socket one send. The future gets the statuses of
        ``parts``' events in order, or the message's exception."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self.outbox:
            # Two turns of the loop, not one: the requests whose bodies uvicorn
            # reads in the next turn join this message too (fewer, larger groups).
            loop.call_soon(loop.call_soon, self._flush, timeout)
        self.outbox.append((parts, count, future))
        self.outbox_events += count
        return future

    def _flush(self, timeout: float) -> None:
        """Send the outbox as one STORE. A plain callback, not a task: with one
        event per HTTP request, a task, a coroutine and a ``wait_for`` per
        message were a good part of the front's cost. The reply (or a failure)
        resolves the message's future; ``_settle`` hands each waiter its part."""
        batches, self.outbox, count = self.outbox, [], self.outbox_events
        self.outbox_events = 0
        if self.stalled:
            _settle(batches, exc=self.stalled_error())
            return
        parts = batches[0][0] if len(batches) == 1 else [part for b in batches for part in b[0]]
        try:
            req_id, reply = self._send(protocol.STORE, parts)
        except Exception as exc:  # every request of the message learns why it was not sent
            _settle(batches, exc=exc if isinstance(exc, Unavailable)
                    else Unavailable(f"cannot send to {self.name}: {exc}"))
            return
        self.inflight_events += count
        timer = asyncio.get_running_loop().call_later(timeout, self._time_out, reply, timeout)

        def done(reply: asyncio.Future) -> None:
            timer.cancel()
            self.pending.pop(req_id, None)
            self.inflight_events -= count
            if reply.cancelled():
                _settle(batches, exc=Unavailable(f"{self.name}: shutting down"))
            elif reply.exception() is not None:
                _settle(batches, exc=reply.exception())
            else:
                _settle(batches, statuses=reply.result())
        reply.add_done_callback(done)

    def _time_out(self, reply: asyncio.Future, timeout: float) -> None:
        if not reply.done():
            reply.set_exception(Unavailable(f"{self.name} did not answer within {timeout:g} s"))

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for future in self.pending.values():
            if not future.done():
                future.set_exception(Unavailable(f"{self.name}: shutting down"))
        self.sock.disable_monitor()
        self.monitor.close()
        self.sock.close()


def _settle(batches: List[Tuple[Any, int, asyncio.Future]], statuses: bytes = b"",
            exc: Optional[BaseException] = None) -> None:
    """Give each request of one STORE message its fate: its own slice of the
    statuses, in the order the requests were queued, or the message's exception."""
    start = 0
    for _parts, n, future in batches:
        if not future.done():
            if exc is None:
                future.set_result(statuses[start:start + n])
            else:
                future.set_exception(exc)
        start += n


def encode_cursor(position: Dict[int, int]) -> str:
    return base64.urlsafe_b64encode(protocol.pack(position)).decode().rstrip("=")


def decode_cursor(text: str) -> Dict[int, int]:
    """The per-partition positions of a cursor, or ValueError."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        position = protocol.unpack(raw)
    except (binascii.Error, ValueError, TypeError, Exception):
        raise ValueError("not a cursor returned by GET /events") from None
    if not isinstance(position, dict) or not all(
            isinstance(k, int) and isinstance(v, int) and k >= 0 and v >= 0
            for k, v in position.items()):
        raise ValueError("not a cursor returned by GET /events")
    return position


class WorkerPool:
    """Routes events to the worker that owns their partition."""

    def __init__(self, ctx: zmq.asyncio.Context, config: Any) -> None:
        self.config = config
        self.partition_of = PartitionCache(config.partitions)
        self.peers = [Peer(ctx, endpoint, f"worker {i}", config.limits_stall_s)
                      for i, endpoint in enumerate(config.worker_endpoints())]
        self.timeout = config.limits_ack_timeout_s
        self.max_inflight = config.limits_max_inflight_events

    def start(self) -> None:
        for peer in self.peers:
            peer.start()

    def close(self) -> None:
        for peer in self.peers:
            peer.close()

    def inflight(self) -> List[int]:
        return [peer.inflight_events for peer in self.peers]

    async def store(self, events: Sequence[WireEvent]) -> bytes:
        """Commit ``events``; return one status byte per event (1 stored, 0 duplicate)."""
        by_partition: Dict[int, Tuple[List[int], List[WireEvent]]] = {}
        partition = self.partition_of
        for position, event in enumerate(events):
            p = partition(event[0])
            group = by_partition.get(p)
            if group is None:
                group = by_partition[p] = ([], [])
            group[0].append(position)
            group[1].append(event)
        # worker -> (positions of its events in the order sent, [(partition, events)])
        groups: Dict[int, Tuple[List[int], List[Tuple[int, List[WireEvent]]]]] = {}
        workers = len(self.peers)
        for p, (positions, part) in by_partition.items():
            order, parts = groups.setdefault(owner_of(p, workers), ([], []))
            order.extend(positions)
            parts.append((p, part))
        for w, (order, _parts) in groups.items():
            peer = self.peers[w]
            held = peer.inflight_events + peer.outbox_events
            if held + len(order) > self.max_inflight and held:
                raise Overloaded(f"{peer.name} has {held} events in flight")
        workers_used = list(groups)
        futures = [self.peers[w].submit(groups[w][1], len(groups[w][0]), self.timeout) for w in workers_used]
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
                if isinstance(result, PeerError) and result.code == protocol.ERR_INTERNAL:
                    raise Unavailable(result.reason)
                raise result
        if len(workers_used) == 1 and len(by_partition) == 1:
            return results[0]  # type: ignore[return-value]  # one part: already in request order
        statuses = bytearray(len(events))
        for w, result in zip(workers_used, results):
            for position, status in zip(groups[w][0], result):  # type: ignore[arg-type]
                statuses[position] = status
        return bytes(statuses)

    async def page(self, topic: Optional[str], position: Dict[int, int],
                   limit: int) -> Tuple[List[List[Any]], Dict[int, int]]:
        """Up to ``limit`` events after ``position`` in processing order, and the
        position after them."""
        if topic is None:
            asked = list(range(len(self.peers)))
        else:
            asked = [owner_of(self.partition_of(topic), len(self.peers))]
        query = {"topic": topic, "after": position, "limit": limit}
        results = await asyncio.gather(
            *(self.peers[w].request(protocol.QUERY, query, self.timeout) for w in asked))
        rows = [row for result in results for row in result]
        rows.sort(key=lambda row: (row[7], row[0], row[1]))
        rows = rows[:limit]
        after = dict(position)
        for row in rows:
            after[row[0]] = row[1]
        return rows, after
