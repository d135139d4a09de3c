"""One DEALER to one ROUTER (a worker or the stats process), from asyncio.

Many requests in flight, each matched to its reply by request id, each with
a timeout. STORE requests submitted in one turn of the event loop leave as one
message (``Outbox``), whose answer is cut back per request. A peer that owes
answers and says nothing for ``limits.stall_s`` (stopped, hung, stuck on its
disk) fails what it holds, and what comes next until it speaks again; a peer
at work on a long request says so (BUSY), so busy is never taken for stalled.
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
from zmq.utils import monitor as zmq_monitor

from .. import protocol
from ..ledger import Ledger
from ..protocol import Part, StoreBody
from .window import Window

log = logging.getLogger("agg.dispatch")

T = TypeVar("T")
# Sends go out (IMMEDIATE) once the handshake is done, not at the connection.
HANDSHAKEN = getattr(zmq, "EVENT_HANDSHAKE_SUCCEEDED", zmq.EVENT_CONNECTED)


class Unavailable(Exception):
    """A peer is down or did not answer in time; nothing is acknowledged."""


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
        self.bytes = 0

    @property
    def events(self) -> int:
        return self.ledger.events

    def add(self, parts: Sequence[Part], size: int, future: "asyncio.Future[bytes]") -> None:
        self.ledger.add(parts)
        self.bytes += size
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
                 stall_s: Optional[float] = None, window: Optional[Window] = None) -> None:
        self.endpoint = endpoint
        self.name = name
        self.window = window or Window(name, 2**62, 2**62, 1.0, 1)  # the stats peer: unbounded
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
        # A worker being replaced is back within a second: try again at least every 250 ms.
        self.sock.setsockopt(zmq.RECONNECT_IVL_MAX, 250)
        # Connected or not, as the socket says: /health is 503 while the front has no
        # connection to a worker (its start, a restart), when publishes would be 503 too.
        # The monitor comes before the connect, or its first handshake could pass unseen.
        self.connected = False
        self.monitor = self.sock.get_monitor_socket(HANDSHAKEN | zmq.EVENT_DISCONNECTED)
        self.sock.connect(endpoint)
        self.ids = itertools.count(1)
        self.pending: Dict[int, "asyncio.Future[Any]"] = {}
        self.inflight_events = 0  # sent and not yet answered (the window also counts the outbox)
        self.outbox: Optional[Outbox] = None  # what this turn of the loop submitted
        self.tasks: List["asyncio.Task[None]"] = []

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
        tick = stall_s / 10  # detection at most 10% late
        last_tick = loop.time()
        silent_ticks = 0
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            # Busy is not dead: a tick this late means this process was busy, and the peer's
            # answers may be waiting unread in the socket; neither is the peer's silence. Two
            # timely ticks in a row must find it silent, so that an answer that came during
            # the first has been read (not ZMQ_EVENTS: reading it hides a message from the
            # asyncio socket, whose notification is edge-triggered).
            late, last_tick = now - last_tick > tick + stall_s / 2, now
            silent = not late and bool(self.pending) and now - self.last_heard > stall_s
            silent_ticks = silent_ticks + 1 if silent else 0
            if silent_ticks >= 2:
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
            event = zmq_monitor.parse_monitor_message(await self.monitor.recv_multipart())["event"]
            self.connected = event == HANDSHAKEN
            if self.connected:
                continue
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
            # The result stays encoded until its waiter, which knows its shape, decodes it.
            req_id, result = protocol.split_head(frames[2])
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

    def submit(self, parts: Sequence[Part], size: int, timeout: float) -> "asyncio.Future[bytes]":
        """Queue ``parts`` (about ``size`` bytes) for this worker; they leave, with
        every other request submitted in the same turn of the event loop, as one
        STORE message, so that many small requests cost the worker one group and
        the socket one send. The future gets the statuses of ``parts``' events in
        order, or the message's exception. The caller has checked the window."""
        loop = asyncio.get_running_loop()
        future: "asyncio.Future[bytes]" = loop.create_future()
        if self.outbox is None:
            self.outbox = Outbox()
            # Two turns of the loop, not one: the requests whose bodies uvicorn
            # reads in the next turn join this message too (fewer, larger groups).
            loop.call_soon(loop.call_soon, self._flush, timeout)
        self.outbox.add(parts, size, future)
        self.window.take(sum(len(part.events) for part in parts), size)
        return future

    def _flush(self, timeout: float) -> None:
        """Send the outbox as one STORE. A plain callback, not a task: with one
        event per HTTP request, a task, a coroutine and a ``wait_for`` per
        message were a good part of the front's cost. The reply (or a failure)
        resolves the message's future, and the outbox hands each request its part."""
        outbox, self.outbox = self.outbox, None
        assert outbox is not None
        count, size = outbox.events, outbox.bytes
        if self.stalled:
            self.window.give(count, size)
            outbox.settle(exc=self.stalled_error())
            return
        parts = outbox.ledger.parts()
        deadline = time.time() + timeout
        try:
            req_id, reply = self._send(protocol.STORE, lambda rid: StoreBody(rid, parts, deadline))
        except Exception as exc:  # every request of the message learns why it was not sent
            self.window.give(count, size)
            outbox.settle(exc=exc if isinstance(exc, Unavailable)
                          else Unavailable(f"cannot send to {self.name}: {exc}"))
            return
        self.inflight_events += count
        loop = asyncio.get_running_loop()
        sent, ahead = loop.time(), self.inflight_events
        timer = loop.call_later(timeout, self._time_out, reply, timeout)

        def done(reply: "asyncio.Future[Any]") -> None:
            timer.cancel()
            self.pending.pop(req_id, None)
            self.inflight_events -= count
            self.window.give(count, size)
            if not reply.cancelled() and reply.exception() is None:
                self.window.answered(ahead, count, loop.time() - sent)
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
