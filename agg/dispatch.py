"""Talking to the workers (and the stats process) from an asyncio process.

Used by the front and the ingest, so that both paths keep the same routing
and the same back-pressure.

``Peer`` is one DEALER connected to one ROUTER (a worker or the stats
process): many requests in flight, each matched to its reply by request id,
each with a timeout. ``WorkerPool`` splits a publish's events by partition,
hands each worker's parts to its ``Peer``, and puts the statuses back in the
order of the events (``agg.ledger``).

Back-pressure, so that memory stays bounded and overload is said, not hidden:
- a worker with more than ``limits.max_inflight_events`` unacknowledged
  events gets no more: ``Overloaded`` (503 / ERR overload);
- a worker that is not connected (``IMMEDIATE``: nothing is queued for a
  peer that is not there): ``Unavailable`` at once;
- a worker silent for ``limits.stall_s`` while it owes answers (stopped,
  hung, stuck on its disk): ``Unavailable`` for what it holds, and at once for
  what comes next, until it speaks again. A worker at work on a long request
  says so (BUSY), so a busy worker is never taken for a stalled one;
- a worker that does not answer within ``limits.ack_timeout_s``:
  ``Unavailable``. Whatever it did commit is a duplicate when resent, and a
  STORE carries that deadline, so that a worker does not begin one whose
  sender has given up.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type, TypeVar

import msgspec
import zmq
import zmq.asyncio

from . import protocol
from .config import Config
from .ledger import Ledger, Split
from .partition import PartitionCache, owner_of
from .protocol import Event, Part, Query, StoreBody, StoredRow, processing_order

log = logging.getLogger("agg.dispatch")

T = TypeVar("T")

# An OK reply's request id, with its result left encoded until its waiter,
# which knows what shape to expect, decodes it.
_OK_REPLY = msgspec.msgpack.Decoder(Tuple[Any, msgspec.Raw])


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


class Outbox:
    """The STORE requests of one turn of the event loop, bound for one worker:
    they leave as one message, and its answer is cut back per request."""

    def __init__(self) -> None:
        self.ledger = Ledger()
        self.futures: List["asyncio.Future[bytes]"] = []

    @property
    def events(self) -> int:
        return self.ledger.events

    def add(self, parts: Sequence[Part], future: "asyncio.Future[bytes]") -> None:
        self.ledger.add(parts)
        self.futures.append(future)

    def settle(self, statuses: bytes = b"", exc: Optional[BaseException] = None) -> None:
        """Give each request its fate: its own statuses, or the message's exception."""
        by_partition = self.ledger.split(statuses) if exc is None else {}
        for i, future in enumerate(self.futures):
            if future.done():
                continue
            if exc is None:
                future.set_result(self.ledger.statuses_of(i, by_partition))
            else:
                future.set_exception(exc)


class Peer:
    """One DEALER to one ROUTER, with request ids and timeouts."""

    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str, name: str,
                 stall_s: Optional[float] = None) -> None:
        self.endpoint = endpoint
        self.name = name
        self.stall_s = stall_s
        self.stalled = False
        self.last_heard = 0.0  # when it last spoke, or began to owe an answer
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
        self.pending: Dict[int, "asyncio.Future[Any]"] = {}
        self.inflight_events = 0
        self.outbox: Optional[Outbox] = None  # what this turn of the loop submitted
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.tasks: List["asyncio.Task[None]"] = []

    @property
    def outbox_events(self) -> int:
        return self.outbox.events if self.outbox is not None else 0

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
                self._reply(frames)
            except protocol.ProtocolError as exc:
                log.warning("bad reply from %s: %s", self.name, exc)

    def _reply(self, frames: List[bytes]) -> None:
        """Resolve the request that ``frames`` answer."""
        kind = protocol.check_envelope(frames)
        self.last_heard = asyncio.get_running_loop().time()
        self.stalled = False
        if kind == protocol.BUSY:
            return  # still at work: heard, and nothing to resolve
        if kind == protocol.OK:
            try:
                req_id, result = _OK_REPLY.decode(frames[2])
            except msgspec.DecodeError as exc:
                raise protocol.ProtocolError(protocol.ERR_INVALID, f"malformed OK: {exc}") from None
            future = self.pending.pop(req_id, None)
            if future is not None and not future.done():
                future.set_result(result)
            return
        _kind, body = protocol.decode(frames)
        req_id, _ok, (code, reason, errors) = protocol.split_reply(kind, body)
        future = self.pending.pop(req_id, None)
        if future is not None and not future.done():  # else: timed out, its caller has answered
            future.set_exception(PeerError(code, reason, errors))

    def stalled_error(self) -> Unavailable:
        return Unavailable(f"{self.name} is stalled: it has not answered for over "
                           f"{(self.stall_s or 0) * 1000:.0f} ms")

    def _send(self, kind: bytes, body_of: Callable[[int], Any]) -> Tuple[int, "asyncio.Future[Any]"]:
        """Send one request now, its body made for its request id by ``body_of``,
        and register the future its reply will resolve: (request id, future).
        Unavailable if no peer is connected; another failure of the send is
        raised as it is."""
        req_id = next(self.ids)
        frames = protocol.encode(kind, body_of(req_id))
        # NOBLOCK: the send happens now or fails now, so the returned future is done.
        sent: Any = self.sock.send_multipart(frames, flags=zmq.NOBLOCK)
        failure = sent.exception()
        if isinstance(failure, zmq.Again):
            raise Unavailable(f"{self.name} is not connected")
        if failure is not None:
            raise failure
        loop = asyncio.get_running_loop()
        if not self.pending:
            self.last_heard = loop.time()  # the clock of silence starts with the first debt
        future: "asyncio.Future[Any]" = loop.create_future()
        self.pending[req_id] = future
        return req_id, future

    async def request(self, kind: bytes, data: Any, timeout: float, shape: Type[T]) -> T:
        """Send one request (a query) and wait for its reply, decoded as ``shape``."""
        if self.stalled:
            raise self.stalled_error() from None
        req_id, future = self._send(kind, lambda rid: [rid, data])
        try:
            raw = await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise Unavailable(f"{self.name} did not answer within {timeout:g} s") from None
        finally:
            self.pending.pop(req_id, None)
        try:
            return msgspec.msgpack.decode(raw, type=shape)
        except msgspec.DecodeError as exc:
            raise PeerError(protocol.ERR_INVALID, f"{self.name} answered a malformed reply: {exc}") from None

    def submit(self, parts: Sequence[Part], timeout: float) -> "asyncio.Future[bytes]":
        """Queue ``parts`` for this worker; they leave, with every other request
        submitted in the same turn of the event loop, as one STORE message, so
        that many small requests cost the worker one group and the socket one
        send. The future gets the statuses of ``parts``' events in order, or
        the message's exception."""
        loop = asyncio.get_running_loop()
        future: "asyncio.Future[bytes]" = loop.create_future()
        if self.outbox is None:
            self.outbox = Outbox()
            # Two turns of the loop, not one: the requests whose bodies uvicorn
            # reads in the next turn join this message too (fewer, larger groups).
            loop.call_soon(loop.call_soon, self._flush, timeout)
        self.outbox.add(parts, future)
        return future

    def _flush(self, timeout: float) -> None:
        """Send the outbox as one STORE. A plain callback, not a task: with one
        event per HTTP request, a task, a coroutine and a ``wait_for`` per
        message were a good part of the front's cost. The reply (or a failure)
        resolves the message's future, and the outbox hands each request its part."""
        outbox, self.outbox = self.outbox, None
        assert outbox is not None
        if self.stalled:
            outbox.settle(exc=self.stalled_error())
            return
        parts, count = outbox.ledger.parts(), outbox.events
        deadline = time.time() + timeout
        try:
            req_id, reply = self._send(protocol.STORE, lambda rid: StoreBody(rid, parts, deadline))
        except Exception as exc:  # every request of the message learns why it was not sent
            outbox.settle(exc=exc if isinstance(exc, Unavailable)
                          else Unavailable(f"cannot send to {self.name}: {exc}"))
            return
        self.inflight_events += count
        timer = asyncio.get_running_loop().call_later(timeout, self._time_out, reply, timeout)

        def done(reply: "asyncio.Future[Any]") -> None:
            timer.cancel()
            self.pending.pop(req_id, None)
            self.inflight_events -= count
            if reply.cancelled():
                outbox.settle(exc=Unavailable(f"{self.name}: shutting down"))
            elif reply.exception() is not None:
                outbox.settle(exc=reply.exception())
            else:
                try:
                    statuses = msgspec.msgpack.decode(reply.result(), type=bytes)
                except msgspec.DecodeError:
                    outbox.settle(exc=PeerError(protocol.ERR_INVALID, f"{self.name} answered no statuses"))
                    return
                outbox.settle(statuses)
        reply.add_done_callback(done)

    def _time_out(self, reply: "asyncio.Future[Any]", timeout: float) -> None:
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


class WorkerPool:
    """Routes events to the worker that owns their partition."""

    def __init__(self, ctx: zmq.asyncio.Context, config: Config) -> None:
        self.partition_of = PartitionCache(config.partitions)
        self.peers = [Peer(ctx, endpoint, f"worker {i}", config.limits.stall_s)
                      for i, endpoint in enumerate(config.worker_endpoints())]
        self.timeout = config.limits.ack_timeout_s
        self.max_inflight = config.limits.max_inflight_events

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

    async def store(self, events: Sequence[Event]) -> bytes:
        """Commit ``events``; return one status byte per event (1 stored, 0 duplicate)."""
        split = Split(events, self.partition_of)
        by_worker = split.by_owner(self.owner)
        for w, parts in by_worker.items():
            peer = self.peers[w]
            held = peer.inflight_events + peer.outbox_events
            if held and held + sum(len(part.events) for part in parts) > self.max_inflight:
                raise Overloaded(f"{peer.name} has {held} events in flight")
        futures = [self.peers[w].submit(parts, self.timeout) for w, parts in by_worker.items()]
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
        query = Query(topic, position, limit)
        results = await asyncio.gather(
            *(self.peers[w].request(protocol.QUERY, query, self.timeout, List[StoredRow]) for w in asked))
        rows = sorted((row for result in results for row in result), key=processing_order)[:limit]
        after = dict(position)
        for row in rows:
            after[row.partition] = row.seq
        return rows, after
