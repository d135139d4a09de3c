"""Python clients of agg: publishers over ZeroMQ and HTTP, and the stats query.

``Publisher`` (blocking) and ``AsyncPublisher`` (asyncio) speak the native
ingest's protocol (see ``agg.protocol`` and the README); ``HttpPublisher``
POSTs to ``/publish`` from a few threads. All three cut events into batches,
keep up to ``max_inflight`` batches in flight, and resend a batch that was not
acknowledged within ``ack_timeout`` or that agg refused for a passing reason
(overload, a worker down), with the same backoff. Resending is safe: agg drops
the duplicates it creates. A batch refused as invalid is not resent; it is
reported, with agg's reasons. A ``time_limit`` ends the retries: what is not
acknowledged by then is reported as failed.

``query_stats(endpoint)`` asks the stats process directly, as ``agg-stats`` does.
``publish_request`` and ``read_response`` are the bytes of one keep-alive
POST /publish and the reading of its answer, for asyncio load generators.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import itertools
import json
import os
import random
import threading
import time
import urllib.parse
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

import zmq
import zmq.asyncio

from . import protocol

# ERR codes worth a resend: the batch was not acknowledged for a passing reason.
TRANSIENT = {protocol.ERR_OVERLOAD, protocol.ERR_UNAVAILABLE, protocol.ERR_INTERNAL, protocol.ERR_EXPIRED}
FIRST_BACKOFF = 0.05
# How long a native publisher waits for its connection before the first try (with
# IMMEDIATE, a send before it is up fails, and would be retried after a backoff).
CONNECT_WAIT_MS = 1000


def backoff(tries: int, longest: float) -> float:
    """The pause before try ``tries + 1``: doubling from 50 ms up to ``longest``,
    with jitter, so that publishers refused together do not come back together."""
    return min(longest, FIRST_BACKOFF * 2 ** (tries - 1)) * random.uniform(0.5, 1.0)


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


@dataclasses.dataclass
class _Batch:
    events: List[Dict[str, Any]]
    tries: int = 0
    not_before: float = 0.0


@dataclasses.dataclass(frozen=True)
class Settings:
    """How a publisher batches, waits and retries."""

    batch_size: int = 1000
    max_inflight: int = 8
    ack_timeout: float = 10.0
    max_retries: int = 20
    max_backoff: float = 2.0

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_inflight < 1:
            raise ValueError("batch_size and max_inflight must be at least 1")


class _Session:
    """The bookkeeping of one ``publish`` run, with no I/O: which batches to send,
    which are in flight since when, what came back, what to resend. Both
    transports drive one."""

    def __init__(self, settings: Settings, events: Sequence[Dict[str, Any]],
                 on_ack: Optional[Callable[[int], None]], time_limit: Optional[float]) -> None:
        size = settings.batch_size
        self.queue = [_Batch(list(events[i:i + size])) for i in range(0, len(events), size)]
        self.queue.reverse()  # pop() from the end sends in order
        self.inflight: Dict[int, Tuple[_Batch, float]] = {}
        self.s = settings
        self.ids = itertools.count(1)
        self.on_ack = on_ack
        self.start = time.monotonic()
        self.deadline = None if time_limit is None else self.start + time_limit
        self.result = PublishResult(events=len(events), batches=len(self.queue))

    @property
    def done(self) -> bool:
        return not self.queue and not self.inflight

    def next_batch(self, now: float) -> Optional[Tuple[int, _Batch]]:
        """The next batch due to go, now in flight, if the window has room."""
        if self.deadline is not None and now >= self.deadline:
            self._give_up_all("the time limit passed")
            return None
        if len(self.inflight) >= self.s.max_inflight:
            return None
        for i in range(len(self.queue) - 1, -1, -1):  # in order, skipping those still backing off
            if self.queue[i].not_before <= now:
                batch = self.queue.pop(i)
                req_id = next(self.ids)
                batch.tries += 1
                self.inflight[req_id] = (batch, now)
                return req_id, batch
        return None

    def _give_up_all(self, reason: str) -> None:
        batches = self.queue + [batch for batch, _sent in self.inflight.values()]
        self.queue, self.inflight = [], {}
        if batches:
            self.result.failed += sum(len(b.events) for b in batches)
            self.result.errors.append(f"gave up on {len(batches)} batches: {reason}")

    def _retry(self, batch: _Batch, reason: str, now: float, delay: Optional[float] = None) -> None:
        if batch.tries > self.s.max_retries:
            self.result.failed += len(batch.events)
            self.result.errors.append(f"gave up after {batch.tries} tries: {reason}")
            return
        self.result.retries += 1
        pause = backoff(batch.tries, self.s.max_backoff) if delay is None else min(self.s.max_backoff, delay)
        batch.not_before = now + pause
        self.queue.append(batch)

    def _take(self, req_id: Any) -> Optional[_Batch]:
        entry = self.inflight.pop(req_id, None) if isinstance(req_id, int) else None
        return None if entry is None else entry[0]  # None: a try we already gave up waiting for

    def acknowledged(self, req_id: Any, stored: int) -> None:
        batch = self._take(req_id)
        if batch is None:
            return
        self.result.acknowledged += len(batch.events)
        self.result.stored += stored
        self.result.duplicates += len(batch.events) - stored
        if self.on_ack is not None:
            self.on_ack(len(batch.events))

    def refused(self, req_id: Any, transient: bool, reason: str, now: float,
                delay: Optional[float] = None) -> None:
        """agg said no: resend later if ``transient``, else report the batch rejected."""
        batch = self._take(req_id)
        if batch is None:
            return
        if transient:
            self._retry(batch, reason, now, delay)
        else:
            self.result.rejected += len(batch.events)
            self.result.errors.append(reason)

    def on_reply(self, frames: List[bytes], now: float) -> None:
        """A native answer."""
        try:
            kind, body = protocol.decode(frames)
            req_id, ok, payload = protocol.split_reply(kind, body)
        except protocol.ProtocolError:
            return
        if ok:
            self.acknowledged(req_id, sum(1 for status in payload if status == protocol.STORED))
        else:
            code, reason, _errors = payload
            self.refused(req_id, code in TRANSIENT, f"{code}: {reason}", now)

    def lost(self, req_id: int, reason: str, now: float) -> None:
        """No answer will come for this try (not sent, the connection broke)."""
        self.refused(req_id, True, reason, now)

    def expire(self, now: float) -> None:
        for req_id, (_batch, sent) in list(self.inflight.items()):
            if now - sent >= self.s.ack_timeout:
                self.lost(req_id, f"no answer within {self.s.ack_timeout:g} s", now)

    def wait_time(self, now: float) -> float:
        """How long the caller may wait for a reply before something else is due."""
        due = [sent + self.s.ack_timeout for _b, sent in self.inflight.values()]
        if self.queue and len(self.inflight) < self.s.max_inflight:
            due.append(min(b.not_before for b in self.queue))
        if self.deadline is not None:
            due.append(self.deadline)
        return max(0.0, min(due) - now) if due else 0.0

    def finish(self) -> PublishResult:
        self.result.elapsed = time.monotonic() - self.start
        return self.result


# -- native ----------------------------------------------------------------------------------

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


class _Native:
    def __init__(self, endpoint: str, *, batch_size: int = 1000, max_inflight: int = 8,
                 ack_timeout: float = 10.0, max_retries: int = 20, max_backoff: float = 2.0,
                 curve_server_key: Optional[bytes] = None, curve_client_cert: Optional[str] = None,
                 context: Optional[zmq.Context] = None) -> None:
        self.settings = Settings(batch_size, max_inflight, ack_timeout, max_retries, max_backoff)
        self.endpoint = endpoint
        self.sock = self._context(context).socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        # Queue nothing while agg is not there: a send fails at once and is retried.
        self.sock.setsockopt(zmq.IMMEDIATE, 1)
        load_curve_options(self.sock, curve_server_key, curve_client_cert)
        self.sock.connect(endpoint)

    def _context(self, context: Optional[zmq.Context]) -> zmq.Context:
        return context or zmq.Context.instance()

    def _to_send(self, session: _Session, now: float) -> List[Tuple[int, List[bytes]]]:
        out: List[Tuple[int, List[bytes]]] = []
        while True:
            taken = session.next_batch(now)
            if taken is None:
                return out
            req_id, batch = taken
            out.append((req_id, protocol.encode(protocol.BATCH, [req_id, batch.events])))

    def _unsent(self, session: _Session, req_id: int, now: float) -> None:
        session.lost(req_id, f"not connected to agg at {self.endpoint}", now)

    def close(self) -> None:
        self.sock.close()


class Publisher(_Native):
    """Blocking publisher: ``Publisher(endpoint).publish(events) -> PublishResult``."""

    def publish(self, events: Iterable[Dict[str, Any]], on_ack: Optional[Callable[[int], None]] = None,
                time_limit: Optional[float] = None) -> PublishResult:
        """Send every event; return once each is acknowledged, rejected or given up on.
        ``on_ack(n)`` is called as each batch of ``n`` events is acknowledged."""
        session = _Session(self.settings, list(events), on_ack, time_limit)
        self.sock.poll(CONNECT_WAIT_MS, zmq.POLLOUT)  # a first try before the connection is up fails
        while not session.done:
            now = time.monotonic()
            for req_id, frames in self._to_send(session, now):
                try:
                    self.sock.send_multipart(frames, zmq.NOBLOCK)
                except zmq.Again:
                    self._unsent(session, req_id, now)
            if self.sock.poll(max(1, int(session.wait_time(now) * 1000))):
                while True:
                    try:
                        frames = self.sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    session.on_reply(frames, time.monotonic())
            session.expire(time.monotonic())
        return session.finish()

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncPublisher(_Native):
    """asyncio publisher: ``await AsyncPublisher(endpoint).publish(events)``."""

    def _context(self, context: Optional[zmq.Context]) -> zmq.Context:
        return context or zmq.asyncio.Context.instance()

    async def publish(self, events: Iterable[Dict[str, Any]], on_ack: Optional[Callable[[int], None]] = None,
                      time_limit: Optional[float] = None) -> PublishResult:
        """As ``Publisher.publish``, without blocking the event loop."""
        session = _Session(self.settings, list(events), on_ack, time_limit)
        await self.sock.poll(CONNECT_WAIT_MS, zmq.POLLOUT)  # a first try before the connection is up fails
        while not session.done:
            now = time.monotonic()
            for req_id, frames in self._to_send(session, now):
                try:
                    await self.sock.send_multipart(frames, zmq.NOBLOCK)
                except zmq.Again:
                    self._unsent(session, req_id, now)
            if await self.sock.poll(max(1, int(session.wait_time(now) * 1000))):
                while True:
                    try:
                        frames = await self.sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    session.on_reply(frames, time.monotonic())
            session.expire(time.monotonic())
        return session.finish()

    async def __aenter__(self) -> "AsyncPublisher":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()


# -- HTTP ------------------------------------------------------------------------------------

class HttpPublisher:
    """POSTs batches to ``URL/publish``, one keep-alive connection per thread,
    ``max_inflight`` threads: ``HttpPublisher(url).publish(events) -> PublishResult``.
    A 503's ``Retry-After`` sets the pause before its resend (at most ``max_backoff``)."""

    def __init__(self, url: str, *, batch_size: int = 500, max_inflight: int = 4, ack_timeout: float = 30.0,
                 max_retries: int = 30, max_backoff: float = 2.0, token: Optional[str] = None) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"the URL must be http://HOST:PORT, got {url!r}")
        self.settings = Settings(batch_size, max_inflight, ack_timeout, max_retries, max_backoff)
        self.host, self.port = parsed.hostname, parsed.port or 80
        self.path = parsed.path.rstrip("/") + "/publish"
        self.headers = {"Content-Type": "application/json"}
        token = token if token is not None else os.environ.get("AGG_PUBLISH_TOKEN")
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def publish(self, events: Iterable[Dict[str, Any]], on_ack: Optional[Callable[[int], None]] = None,
                time_limit: Optional[float] = None) -> PublishResult:
        session = _Session(self.settings, list(events), on_ack, time_limit)
        lock = threading.Condition()
        threads = [threading.Thread(target=self._sender, args=(session, lock), daemon=True)
                   for _ in range(min(self.settings.max_inflight, max(1, len(session.queue))))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return session.finish()

    def _sender(self, session: _Session, lock: threading.Condition) -> None:
        conn: Optional[http.client.HTTPConnection] = None
        while True:
            with lock:
                taken = None
                while taken is None and not session.done:
                    taken = session.next_batch(time.monotonic())
                    if taken is None and not session.done:
                        lock.wait(max(0.001, session.wait_time(time.monotonic())))
                if taken is None:
                    lock.notify_all()
                    if conn is not None:
                        conn.close()
                    return
            req_id, batch = taken
            if conn is None:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=self.settings.ack_timeout)
            outcome = self._post(conn, batch.events)
            if isinstance(outcome, Refusal) and outcome.broken:
                conn.close()
                conn = None  # a new connection for the next try
            with lock:
                if isinstance(outcome, Refusal):
                    session.refused(req_id, outcome.transient, outcome.reason, time.monotonic(), outcome.delay)
                else:
                    session.acknowledged(req_id, outcome)
                lock.notify_all()

    def _post(self, conn: http.client.HTTPConnection, events: List[Dict[str, Any]]) -> Union[int, "Refusal"]:
        """The count of ``events`` stored now, or why they were not acknowledged."""
        try:
            conn.request("POST", self.path, body=json.dumps({"events": events}).encode(), headers=self.headers)
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            return Refusal(True, f"connection: {exc or type(exc).__name__}", broken=True)
        if resp.status == 200:
            return int(json.loads(data)["stored"])
        reason = f"HTTP {resp.status}: {_reason(data)}"
        if resp.status in (502, 503, 504):
            retry_after = resp.getheader("Retry-After")
            return Refusal(True, reason, float(retry_after) if retry_after and retry_after.isdigit() else None)
        return Refusal(False, reason)


class Refusal(NamedTuple):
    """An HTTP answer that acknowledged nothing."""

    transient: bool  # worth a resend
    reason: str
    delay: Optional[float] = None  # the Retry-After, if any
    broken: bool = False  # the connection is gone


def _reason(data: bytes) -> str:
    try:
        body = json.loads(data)
        return str(body.get("description") or body.get("title") or body)[:300]
    except ValueError:
        return data[:200].decode("utf-8", "replace")


def publish_request(body: bytes) -> bytes:
    """A keep-alive ``POST /publish`` of the JSON ``body``."""
    return (b"POST /publish HTTP/1.1\r\nHost: agg\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body)


async def read_response(reader: asyncio.StreamReader) -> Tuple[bytes, bytes]:
    """The head and the body of one HTTP/1.1 response (agg's have a Content-Length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    return head, await reader.readexactly(length)


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
