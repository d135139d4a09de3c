"""Native ingest: msgpack batches over ZeroMQ, acknowledged after commit.

Binds:     ROUTER at ``ingest.endpoint`` (default tcp://127.0.0.1:5555; port 0
           picks a free one, announced in READY). Publishers connect a DEALER
           and may keep many batches in flight; every batch gets exactly one
           answer, matched by its request id.
Connects:  a DEALER to every worker (``agg.dispatch.WorkerPool``, the same
           routing and back-pressure as the HTTP front) and a PUB to
           ``endpoints.stats_in`` for its report (``agg.edgereport``).
Owns:      nothing durable.
Stops:     on SIGTERM, after answering the batches in flight.

Frames (see ``agg.protocol``; the README spells them out for other languages)::

    publisher -> agg:  [b"agg1", b"B", msgpack([req_id, [event, ...]])]
                       event = {"topic", "event_id", "timestamp", "source", "payload"}
    agg -> publisher:  [b"agg1", b"K", msgpack([req_id, statuses])]
                       statuses: bytes, one per event, 1 stored / 0 duplicate
                   or  [b"agg1", b"E", msgpack([req_id, code, reason, [[index, field, reason], ...]])]

A message larger than ``limits.max_frame_bytes`` closes that publisher's
connection (ZeroMQ's MAXMSGSIZE); anything else malformed gets an ERR frame.
A batch the ingest has no room for (``agg.admission``: ``ingest.max_batches``,
``limits.max_reading_bytes``, the workers' windows) is answered ERR overload
at once, before it is decoded.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, List, Optional, Sequence, Set

import zmq
import zmq.asyncio

from . import config as configmod
from . import lifecycle, protocol
from .admission import Admission, Refused, Ticket
from .looplag import LoopLag
from .config import Config
from .dispatch import Overloaded, Unavailable, WorkerPool
from .edgereport import EdgeReporter
from .events import FastMsgpackDecoder, InvalidEvents, Limits, validate_batch
from .protocol import Event
from .sockets import adrain

log = logging.getLogger("agg.ingest")

# Messages ZeroMQ may queue per publisher before the ingest reads them; the
# ingest reads at once and refuses what it has no room for, so this is a cap,
# not a queue that builds.
RECEIVE_HWM = 256


def configure_curve(ctx: zmq.asyncio.Context, sock: zmq.Socket, config: Config) -> Optional[Any]:
    """Make ``sock`` a CURVE server if keys are configured; return the authenticator."""
    if not config.ingest.curve_secret_key:
        return None
    import zmq.auth
    from zmq.auth.asyncio import AsyncioAuthenticator

    public, secret = zmq.auth.load_certificate(config.ingest.curve_secret_key)
    if secret is None:
        raise configmod.ConfigError(
            f"ingest.curve_secret_key: {config.ingest.curve_secret_key} holds no secret key")
    auth = AsyncioAuthenticator(ctx)
    auth.start()
    clients = config.ingest.curve_clients_dir
    if not clients:
        raise configmod.ConfigError("ingest.curve_clients_dir: required with ingest.curve_secret_key")
    auth.configure_curve(domain="*", location=clients)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True
    return auth


class Ingest:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.limits = Limits.from_config(config)
        self.fast = FastMsgpackDecoder(self.limits)
        self.ctx = zmq.asyncio.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 1000)
        self.router.setsockopt(zmq.MAXMSGSIZE, config.limits.max_frame_bytes)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 0)
        self.router.setsockopt(zmq.RCVHWM, RECEIVE_HWM)
        self.auth = configure_curve(self.ctx, self.router, config)
        self.router.bind(config.ingest.endpoint)
        self.endpoint = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.pool = WorkerPool(self.ctx, config)
        self.lag = LoopLag("ingest", config.limits.max_lag_s)
        self.admission = Admission("ingest", self.pool, config.ingest.max_batches,
                                   config.limits.max_reading_bytes, self.lag)
        self.retry_after = config.limits.retry_after_s
        self.reporter = EdgeReporter(self.ctx, config, "ingest", self.pool.inflight)
        self.tasks: Set[asyncio.Task] = set()

    async def reply(self, rid: bytes, frames: List[bytes]) -> None:
        try:
            await self.router.send_multipart([rid] + frames, flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the publisher is gone; it resends what it did not see acknowledged

    async def handle(self, rid: bytes, frames: List[bytes], ticket: Ticket) -> None:
        try:
            await self.take(rid, frames, ticket)
        finally:
            ticket.release()

    async def take(self, rid: bytes, frames: List[bytes], ticket: Ticket) -> None:
        fast = None
        if len(frames) == 3 and frames[0] == protocol.VERSION and frames[1] == protocol.BATCH:
            fast = self.fast.decode(frames[2])
        if fast is not None:
            ticket.read(len(fast[1]))
            await self.store(rid, fast[0], fast[1], ticket.size)
            return
        # Every error answer carries the request id when the body's start holds one,
        # whatever else is wrong (version, kind, the rest of the body), so it can be matched.
        req_id: Any = protocol.request_id(bytes(frames[2])) if len(frames) == 3 else None
        try:
            kind, body = protocol.decode(frames)
            if kind != protocol.BATCH:
                raise protocol.ProtocolError(protocol.ERR_INVALID, (
                    f"unknown kind '{kind[:16].decode('ascii', 'replace')}': a publisher sends B "
                    "(frames: agg1, B, msgpack [req_id, [event, ...]])"))
            if not isinstance(body, list) or len(body) != 2:
                raise protocol.ProtocolError(protocol.ERR_INVALID,
                                             "the body must be a msgpack array [req_id, [event, ...]]")
            req_id, items = body
            if not isinstance(items, list):
                raise protocol.ProtocolError(protocol.ERR_INVALID, "the events must be an array")
            events = validate_batch(items, self.limits)
        except protocol.ProtocolError as exc:
            self.reporter.reject("unknown_version" if exc.code == protocol.ERR_VERSION
                                 else "malformed_message")
            await self.reply(rid, protocol.encode_err(req_id, exc.code, exc.reason))
            return
        except InvalidEvents as exc:
            self.reporter.reject("invalid_event")
            await self.reply(rid, protocol.encode_err(
                req_id, protocol.ERR_INVALID, f"{exc}; nothing was stored",
                [[e.index, e.field, e.reason] for e in exc.errors]))
            return
        ticket.read(len(events))
        await self.store(rid, req_id, events, ticket.size)

    async def store(self, rid: bytes, req_id: Any, events: List[Event], size: int) -> None:
        try:
            statuses = await self.pool.store(events, size)
        except Overloaded as exc:
            await self.reply(rid, self.refusal(req_id, protocol.ERR_OVERLOAD, str(exc)))
        except Unavailable as exc:
            await self.reply(rid, self.refusal(req_id, protocol.ERR_UNAVAILABLE, str(exc)))
        else:
            self.reporter.count("batches")
            self.reporter.count("events", len(events))
            await self.reply(rid, protocol.encode_ok(req_id, statuses))

    def refusal(self, req_id: Any, code: str, reason: str) -> List[bytes]:
        """ERR overload or unavailable: nothing was acknowledged, resend after the pause."""
        self.reporter.count("refused_" + code)
        return protocol.encode_err(req_id, code, f"{reason}; retry after {self.retry_after} s")

    async def serve(self, stop: lifecycle.StopFlag) -> None:
        self.pool.start()
        poller = zmq.asyncio.Poller()
        poller.register(self.router, zmq.POLLIN)
        while not stop:
            if not await poller.poll(100):
                continue
            async for frames in adrain(self.router):
                rid, rest = frames[0], frames[1:]
                try:
                    ticket = self.admission.admit(sum(map(len, rest)), whole=True)
                except Refused as exc:
                    body = rest[2] if len(rest) == 3 else b""
                    await self.reply(rid, self.refusal(protocol.request_id(body), protocol.ERR_OVERLOAD, str(exc)))
                    continue
                task = asyncio.get_running_loop().create_task(self.handle(rid, rest, ticket))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=self.config.supervisor.grace_s)

    def close(self) -> None:
        self.lag.stop()
        self.reporter.close()
        self.pool.close()
        if self.auth is not None:
            self.auth.stop()
        self.router.close()
        self.ctx.term()


async def _run(config: Config, stop: lifecycle.StopFlag) -> int:
    try:
        ingest = Ingest(config)
    except zmq.ZMQError as exc:
        log.error("ingest.endpoint: cannot bind %s: %s", config.ingest.endpoint, exc)
        return 1
    except configmod.ConfigError as exc:
        log.error("%s", exc)
        return 2
    log.info("listening on %s", ingest.endpoint)
    lifecycle.announce_ready(config, "ingest", 0, ingest.endpoint)
    try:
        await ingest.serve(stop)
    finally:
        ingest.close()
    return 0


def run(config: Config) -> int:
    stop = lifecycle.StopFlag()
    status = lifecycle.run_loop(_run(config, stop))
    log.info("stopped")
    return status


def main(argv: Optional[Sequence[str]] = None) -> int:
    _args, config = configmod.from_command_line("agg-ingest", "run the agg native ZeroMQ ingest", argv)
    lifecycle.setup_logging("ingest", config.log_level, config.log_format)
    return run(config)


if __name__ == "__main__":
    raise SystemExit(main())
