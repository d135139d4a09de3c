"""Native publishers: batches over the ingest's ZeroMQ protocol (see
``agg.protocol`` and the README's "Native ingest"), blocking or asyncio, and
CURVE for the client side."""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import zmq
import zmq.asyncio

from .. import protocol
from ..sockets import adrain, drain
from .session import Interrupted, PublishResult, Settings, Session

# How long a native publisher waits for its connection before the first try (with
# IMMEDIATE, a send before it is up fails, and would be retried after a backoff).
CONNECT_WAIT_MS = 1000


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

    def _to_send(self, session: Session, now: float) -> List[Tuple[int, List[bytes]]]:
        out: List[Tuple[int, List[bytes]]] = []
        while True:
            taken = session.next_batch(now)
            if taken is None:
                return out
            req_id, batch = taken
            out.append((req_id, protocol.encode(protocol.BATCH, [req_id, batch.events])))

    def _unsent(self, session: Session, req_id: int, now: float) -> None:
        session.lost(req_id, f"no answer from {self.endpoint} yet (not connected)", now)

    def close(self) -> None:
        self.sock.close()


class Publisher(_Native):
    """Blocking publisher: ``Publisher(endpoint).publish(events) -> PublishResult``."""

    def publish(self, events: Iterable[Dict[str, Any]], on_ack: Optional[Callable[[int], None]] = None,
                time_limit: Optional[float] = None,
                on_trouble: Optional[Callable[[str], None]] = None) -> PublishResult:
        """Send every event; return once each is acknowledged, rejected or given up on.
        ``on_ack(n)`` is called as each batch of ``n`` events is acknowledged,
        ``on_trouble(reason)`` as a try fails. Ctrl-C raises ``Interrupted``, which
        holds what was acknowledged until then."""
        session = Session(self.settings, list(events), on_ack, time_limit, on_trouble)
        try:
            return self._run(session)
        except KeyboardInterrupt:
            raise Interrupted(session.interrupt()) from None

    def _run(self, session: Session) -> PublishResult:
        self.sock.poll(CONNECT_WAIT_MS, zmq.POLLOUT)  # a first try before the connection is up fails
        while not session.done:
            now = time.monotonic()
            for req_id, frames in self._to_send(session, now):
                try:
                    self.sock.send_multipart(frames, zmq.NOBLOCK)
                except zmq.Again:
                    self._unsent(session, req_id, now)
            if self.sock.poll(max(1, int(session.wait_time(now) * 1000))):
                for frames in drain(self.sock):
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
                      time_limit: Optional[float] = None,
                      on_trouble: Optional[Callable[[str], None]] = None) -> PublishResult:
        """As ``Publisher.publish``, without blocking the event loop."""
        session = Session(self.settings, list(events), on_ack, time_limit, on_trouble)
        await self.sock.poll(CONNECT_WAIT_MS, zmq.POLLOUT)  # a first try before the connection is up fails
        while not session.done:
            now = time.monotonic()
            for req_id, frames in self._to_send(session, now):
                try:
                    await self.sock.send_multipart(frames, zmq.NOBLOCK)
                except zmq.Again:
                    self._unsent(session, req_id, now)
            if await self.sock.poll(max(1, int(session.wait_time(now) * 1000))):
                async for frames in adrain(self.sock):
                    session.on_reply(frames, time.monotonic())
            session.expire(time.monotonic())
        return session.finish()

    async def __aenter__(self) -> "AsyncPublisher":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()
