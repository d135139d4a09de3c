"""The front's server: uvicorn serving ``create_app(config)`` on a socket bound here.

Bounds uvicorn does not keep on its own, kept by a sweep every second: a
connection that has not sent a request's head within ``http.header_timeout_s``
of opening, or of its last answer (a client that trickles a head, or sends
nothing), is closed; a request whose body has not begun within
``http.body_timeout_s`` of its head gets 408 and is closed (once its body has
begun, the publish route's own deadline covers the rest). The app is told how
many connections are open, so that past ``http.max_connections`` it answers
503 and closes.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import signal
import socket
from typing import Any, Callable, Iterator, List, Optional, Sequence

import asyncio
import time

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .. import config as configmod
from .. import lifecycle
from ..config import Config
from .app import create_app
from .backends import Backends
from .gate import Gate

log = logging.getLogger("agg.front")


class JoinedWrites:
    """A connection's transport whose writes of one turn of the loop leave as one.

    uvicorn writes a response's head and its body with a call each, and each is
    a send() of its own: two system calls, and two segments the client wakes up
    for. Here a write is held until the next (the body after the head: both
    leave together) or the end of the turn, whichever comes first. Everything
    else is the transport's; ``close`` sends what is held first."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.held: Optional[bytes] = None
        self.loop = asyncio.get_running_loop()

    def write(self, data: bytes) -> None:
        held = self.held
        if held is None:
            self.held = data
            self.loop.call_soon(self.flush)
        else:
            self.held = None
            self.transport.writelines((held, data))

    def flush(self) -> None:
        held, self.held = self.held, None
        if held is not None and not self.transport.is_closing():
            self.transport.write(held)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class HeadTimedProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol, remembering since when a connection owes the head
    of a request, and since when a request's body has not begun (Falcon's own
    deadline starts with its first bytes, and covers the rest). Its responses
    leave in one write each (``JoinedWrites``)."""

    head_since: Optional[float] = None  # monotonic; None while a request is in hand
    body_since: Optional[float] = None  # monotonic; None once its body has begun, or if it has none

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[arg-type]
        # After uvicorn's own set-up: its flow control pauses and resumes the real transport.
        self.transport = JoinedWrites(self.transport)  # type: ignore[assignment]
        self.head_since = time.monotonic()

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self.head_since = None
        self.body_since = time.monotonic()

    def on_body(self, body: bytes) -> None:
        self._begun()
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._begun()
        super().on_message_complete()

    def _begun(self) -> None:
        # The rest of a body answered already (a 503 from its head) is dropped, and the
        # connection owes its next head from that answer on, as the sweep already counts.
        if self.cycle is None or not self.cycle.response_complete:
            self.head_since = self.body_since = None

    def time_out_body(self, seconds: float) -> None:
        """408 and close: the body of the request in hand has not begun in time."""
        body = orjson.dumps({"title": "Request timeout", "description": (
            f"the body did not begin within {seconds:g} s of the request's head; nothing was stored")})
        if self.cycle is not None:
            self.cycle.response_complete = True  # the app's answer, if it makes one, is not sent
        self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
        self.transport.close()

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)  # a next request whose head is here already
        if not pipelined:
            self.body_since = None  # answered: a body that never comes is owed no 408
        super().on_response_complete()
        if not pipelined:
            self.head_since = time.monotonic()


class Server(uvicorn.Server):
    """uvicorn's server, announcing READY once listening, stopping on our signals,
    and closing connections that keep a request head waiting."""

    def __init__(self, config: uvicorn.Config, agg_config: Config, endpoint: str,
                 reject: Callable[[str], None]) -> None:
        super().__init__(config)
        self.agg_config = agg_config
        self.endpoint = endpoint
        self.reject = reject
        self.sweeper: Optional["asyncio.Task[None]"] = None

    async def startup(self, sockets: Optional[List[socket.socket]] = None) -> None:
        await super().startup(sockets=sockets)
        if not self.should_exit:
            self.sweeper = asyncio.get_running_loop().create_task(self._sweep())
            log.info("listening on %s", self.endpoint)
            lifecycle.announce_ready(self.agg_config, "front", 0, self.endpoint)

    async def shutdown(self, sockets: Optional[List[socket.socket]] = None) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()
        await super().shutdown(sockets=sockets)

    async def _sweep(self) -> None:
        http = self.agg_config.http
        head_timeout, body_timeout = http.header_timeout_s, http.body_timeout_s
        while True:
            await asyncio.sleep(min(1.0, head_timeout / 2, body_timeout / 2))
            now = time.monotonic()
            for connection in list(self.server_state.connections):
                if not isinstance(connection, HeadTimedProtocol) or connection.transport.is_closing():
                    continue
                head, body = connection.head_since, connection.body_since
                if head is not None and now - head > head_timeout:
                    connection.transport.close()
                elif body is not None and now - body > body_timeout:
                    self.reject("body_timeout")
                    connection.time_out_body(body_timeout)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        def handle(signum: int, frame: Any) -> None:
            if self.should_exit and not lifecycle.supervised():
                # A second signal outside a supervisor: stop without waiting. Supervised,
                # a repeat is the group's SIGTERM and the supervisor's: one graceful stop
                # (forcing would skip the lifespan's shutdown and log its CancelledError).
                self.force_exit = True
            self.should_exit = True

        previous = lifecycle.stop_signals(handle)
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def run(config: Config) -> int:
    lifecycle.die_with_supervisor()
    if lifecycle.supervised():
        # Until uvicorn takes the signals: a SIGHUP or SIGINT to the group must not kill us.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        sock = bind_socket(config.http.host, config.http.port)
    except OSError as exc:
        log.error("cannot bind %s:%s: %s", config.http.host, config.http.port, exc.strerror)
        return 1
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    endpoint = f"http://{shown}:{port}"
    server: Optional[Server] = None

    def connections() -> int:
        return len(server.server_state.connections) if server is not None else 0
    backends = Backends(config, connections)
    uv_config = uvicorn.Config(
        Gate(create_app(config, backends=backends), backends), lifespan="on", access_log=False, log_config=None,
        log_level=config.log_level, timeout_graceful_shutdown=math.ceil(config.supervisor.grace_s),
        loop="uvloop" if _has("uvloop") else "asyncio",
        # Nothing here reads the client's address, so no per-request X-Forwarded-For pass.
        proxy_headers=False,
        http=HeadTimedProtocol)
    server = Server(uv_config, config, endpoint, backends.reject)
    server.run(sockets=[sock])
    log.info("stopped")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    _args, config = configmod.from_command_line("agg-front", "run the agg HTTP front", argv)
    lifecycle.setup_logging("front", config.log_level, config.log_format)
    return run(config)
