"""Python clients of agg's ZeroMQ endpoints.

``Publisher`` (blocking) and ``AsyncPublisher`` (asyncio) speak the native
ingest's protocol (see ``agg.protocol`` and the README): they cut events into
batches, keep up to ``max_inflight`` batches in flight on one DEALER socket,
and resend a batch that was not acknowledged within ``ack_timeout`` or that
agg refused for a passing reason (overload, a worker down). Resending is safe:
agg drops the duplicates it creates. A batch refused as invalid is not
resent; it is reported, with agg's reasons.

``query_stats(endpoint)`` asks the stats process directly, as ``agg-stats`` does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import zmq
import zmq.asyncio

from . import protocol

# ERR codes worth a resend: the batch was not acknowledged for a passing reason.
TRANSIENT = {protocol.ERR_OVERLOAD, protocol.ERR_UNAVAILABLE, protocol.ERR_INTERNAL}


class NotRunning(Exception):
    """Nothing answers at the endpoint."""


@dataclasses.dataclass
class PublishResult:
    """What agg acknowledged of a run of events (the same for HTTP and ZeroMQ)."""

    events: int = 0
    acknowledged: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    failed: int = 0
    retries: int = 0
    batches: int = 0
    elapsed: float = 0.0
    errors: List[str] = dataclasses.field(default_factory=list)

    def rate(self) -> float:
        return self.acknowledged / self.elapsed if self.elapsed > 0 else 0.0

    def to_json(self) -> Dict[str, Any]:
        out = dataclasses.asdict(self)
        out["events_per_s"] = round(self.rate(), 1)
        out["elapsed"] = round(self.elapsed, 4)
        out["errors"] = self.errors[:10]
        return out

    def render(self) -> str:
        lines = [
            f"events sent       {self.events}",
            f"acknowledged      {self.acknowledged}",
            f"  stored (new)    {self.stored}",
            f"  duplicates      {self.duplicates}",
            f"rejected (4xx)    {self.rejected}",
            f"not acknowledged  {self.failed}",
            f"retries           {self.retries}",
            f"elapsed           {self.elapsed:.3f} s ({self.rate():,.0f} events/s)",
        ]
        lines += [f"error: {e}" for e in self.errors[:5]]
        return "\n".join(lines)


def load_curve_options(sock: zmq.Socket, server_public_key: Optional[bytes],
                       client_cert: Optional[str]) -> None:
    """Make ``sock`` a CURVE client of a server with ``server_public_key``."""
    if server_public_key is None:
        return
    import zmq.auth

    if client_cert:
        public, secret = zmq.auth.load_certificate(client_cert)
        if secret is None:
            raise ValueError(f"{client_cert} holds no secret key")
    else:
        public, secret = zmq.curve_keypair()
    sock.curve_serverkey = server_public_key
    sock.curve_publickey = public
    sock.curve_secretkey = secret


def server_key_of(cert_path: str) -> bytes:
    """The public key in a zmq.auth certificate file (public or secret)."""
    import zmq.auth

    public, _secret = zmq.auth.load_certificate(cert_path)
    return public


@dataclasses.dataclass
class _Batch:
    events: List[Dict[str, Any]]
    tries: int = 0
    not_before: float = 0.0


class _Session:
    """The bookkeeping of one ``publish`` run, with no I/O: which batches to send,
    which are in flight since when, what came back, what to resend."""

    def __init__(self, publisher: "_Base", events: Sequence[Dict[str, Any]],
                 on_ack: Optional[Callable[[int], None]] = None) -> None:
        size = publisher.batch_size
        self.queue = [_Batch(list(events[i:i + size])) for i in range(0, len(events), size)]
        self.queue.reverse()  # pop() from the end sends in order
        self.inflight: Dict[int, Tuple[_Batch, float]] = {}
        self.p = publisher  # its settings and request ids
        self.on_ack = on_ack
        self.result = PublishResult(events=len(events), batches=len(self.queue))

    @property
    def done(self) -> bool:
        return not self.queue and not self.inflight

    def to_send(self, now: float) -> List[Tuple[int, List[bytes]]]:
        out: List[Tuple[int, List[bytes]]] = []
        waiting: List[_Batch] = []
        while self.queue and len(self.inflight) + len(out) < self.p.max_inflight:
            batch = self.queue.pop()
            if batch.not_before > now:
                waiting.append(batch)
                continue
            req_id = next(self.p.ids)
            batch.tries += 1
            self.inflight[req_id] = (batch, now)
            out.append((req_id, protocol.encode(protocol.BATCH, [req_id, batch.events])))
        self.queue.extend(reversed(waiting))
        return out

    def _retry(self, batch: _Batch, reason: str, now: float) -> None:
        if batch.tries > self.p.max_retries:
            self.result.failed += len(batch.events)
            self.result.errors.append(f"gave up after {batch.tries} tries: {reason}")
            return
        self.result.retries += 1
        backoff = min(self.p.max_backoff, 0.05 * 2 ** (batch.tries - 1)) * random.uniform(0.5, 1.0)
        batch.not_before = now + backoff
        self.queue.append(batch)

    def on_reply(self, frames: List[bytes], now: float) -> None:
        try:
            kind, body = protocol.decode(frames)
            req_id, ok, payload = protocol.split_reply(kind, body)
        except protocol.ProtocolError:
            return
        entry = self.inflight.pop(req_id, None) if isinstance(req_id, int) else None
        if entry is None:
            return  # an answer to a try we already gave up waiting for
        batch, _sent = entry
        if ok:
            stored = sum(1 for status in payload if status == protocol.STORED)
            self.result.acknowledged += len(batch.events)
            self.result.stored += stored
            self.result.duplicates += len(batch.events) - stored
            if self.on_ack is not None:
                self.on_ack(len(batch.events))
            return
        code, reason, errors = payload
        if code in TRANSIENT:
            self._retry(batch, f"{code}: {reason}", now)
        else:
            self.result.rejected += len(batch.events)
            self.result.errors.append(f"{code}: {reason}")

    def unsent(self, req_id: int, now: float) -> None:
        """The socket had no peer to take this batch (agg down, or CURVE refused us)."""
        batch, _sent = self.inflight.pop(req_id)
        self._retry(batch, f"not connected to agg at {self.p.endpoint}", now)

    def expire(self, now: float) -> None:
        for req_id, (batch, sent) in list(self.inflight.items()):
            if now - sent >= self.p.ack_timeout:
                del self.inflight[req_id]
                self._retry(batch, f"no answer within {self.p.ack_timeout:g} s", now)

    def wait_time(self, now: float) -> float:
        """How long the caller may wait for a reply before something else is due."""
        due = [sent + self.p.ack_timeout for _b, sent in self.inflight.values()]
        if self.queue and len(self.inflight) < self.p.max_inflight:
            due.append(min(b.not_before for b in self.queue))
        return max(0.0, min(due) - now) if due else 0.0


class _Base:
    def __init__(self, endpoint: str, *, batch_size: int = 1000, max_inflight: int = 8,
                 ack_timeout: float = 10.0, max_retries: int = 20, max_backoff: float = 2.0,
                 curve_server_key: Optional[bytes] = None, curve_client_cert: Optional[str] = None,
                 context: Optional[zmq.Context] = None) -> None:
        if batch_size < 1 or max_inflight < 1:
            raise ValueError("batch_size and max_inflight must be at least 1")
        self.endpoint = endpoint
        self.batch_size = batch_size
        self.max_inflight = max_inflight
        self.ack_timeout = ack_timeout
        self.max_retries = max_retries
        self.max_backoff = max_backoff
        self.ids = itertools.count(1)
        self.sock = self._context(context).socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        load_curve_options(self.sock, curve_server_key, curve_client_cert)
        self.sock.connect(endpoint)

    def _context(self, context: Optional[zmq.Context]) -> zmq.Context:
        return context or zmq.Context.instance()

    def _session(self, events: Iterable[Dict[str, Any]],
                 on_ack: Optional[Callable[[int], None]]) -> _Session:
        return _Session(self, list(events), on_ack)

    def close(self) -> None:
        self.sock.close()


class Publisher(_Base):
    """Blocking publisher: ``Publisher(endpoint).publish(events) -> PublishResult``."""

    def publish(self, events: Iterable[Dict[str, Any]],
                on_ack: Optional[Callable[[int], None]] = None) -> PublishResult:
        """Send every event; return once each is acknowledged, rejected or given up on.
        ``on_ack(n)`` is called as each batch of ``n`` events is acknowledged."""
        session = self._session(events, on_ack)
        start = time.monotonic()
        while not session.done:
            now = time.monotonic()
            for req_id, frames in session.to_send(now):
                try:
                    # NOBLOCK: a DEALER with no peer (agg down, CURVE refused) would block forever.
                    self.sock.send_multipart(frames, zmq.NOBLOCK)
                except zmq.Again:
                    session.unsent(req_id, now)
            if self.sock.poll(max(1, int(session.wait_time(now) * 1000))):
                while True:
                    try:
                        frames = self.sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    session.on_reply(frames, time.monotonic())
            session.expire(time.monotonic())
        session.result.elapsed = time.monotonic() - start
        return session.result

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncPublisher(_Base):
    """asyncio publisher: ``await AsyncPublisher(endpoint).publish(events)``."""

    def _context(self, context: Optional[zmq.Context]) -> zmq.Context:
        return context or zmq.asyncio.Context.instance()

    async def publish(self, events: Iterable[Dict[str, Any]],
                      on_ack: Optional[Callable[[int], None]] = None) -> PublishResult:
        """As ``Publisher.publish``, without blocking the event loop."""
        session = self._session(events, on_ack)
        loop = asyncio.get_running_loop()
        start = loop.time()
        while not session.done:
            now = time.monotonic()
            for req_id, frames in session.to_send(now):
                try:
                    await self.sock.send_multipart(frames, zmq.NOBLOCK)
                except zmq.Again:
                    session.unsent(req_id, now)
            if await self.sock.poll(max(1, int(session.wait_time(now) * 1000))):
                while True:
                    try:
                        frames = await self.sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    session.on_reply(frames, time.monotonic())
            session.expire(time.monotonic())
        session.result.elapsed = loop.time() - start
        return session.result

    async def __aenter__(self) -> "AsyncPublisher":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()


def query_stats(endpoint: str, timeout: float = 2.0) -> Dict[str, Any]:
    """The stats process's summary, or NotRunning if it does not answer in time."""
    ctx: zmq.Context = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send_multipart(protocol.encode(protocol.STATS, [1, {}]))
        if not sock.poll(int(timeout * 1000)):
            raise NotRunning(f"no stats process answered at {endpoint} within {timeout:g} s")
        kind, body = protocol.decode(sock.recv_multipart())
        _req_id, ok, payload = protocol.split_reply(kind, body)
        if not ok:
            raise NotRunning(f"the stats process refused the query: {payload[1]}")
        return payload
    finally:
        sock.close()
