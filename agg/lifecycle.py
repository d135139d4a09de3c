"""What every agg process does the same way: log, stop on a signal, say READY.

- ``setup_logging(role, level, fmt)``: one structured line per record on
  stderr, ``time level role=ROLE pid=PID message`` (``text``), or one JSON
  object a line with those keys (``json``, for log shippers).
- ``StopFlag``: SIGTERM and SIGHUP (and SIGINT when not supervised) only set
  a flag that the process's loop checks each tick; outside a supervisor a
  second signal forces the stop. A supervised child ignores SIGINT and SIGHUP,
  and takes a second SIGTERM as the same stop: Ctrl-C, a closed terminal,
  ``kill -- -PGID``, ``timeout`` and systemd reach the whole process group,
  and the supervisor, not each child, decides the order of the stop (and
  SIGKILLs a child after ``supervisor.grace_s``).
- ``announce_ready(config, role, index, endpoint)``: tell the supervisor, over
  its control socket, that this process has bound its sockets. Outside a
  supervisor (``$AGG_SUPERVISED`` unset) it does nothing.
- ``Heartbeat(config)``: its ``beat()``, called on every turn of a process's
  loop, tells the supervisor about once a second that the loop still turns,
  so that a process hung but alive can be killed and restarted.
- ``run_loop(main)``: run a coroutine on uvloop where it is installed (less
  overhead per message than asyncio's own loop), else on asyncio's.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
import sys
import time
from typing import Any, Callable, Coroutine, Dict, Optional, TypeVar

import zmq

from . import protocol
from .config import Config
from .protocol import Alive, Ready

SUPERVISED_ENV = "AGG_SUPERVISED"
SUPERVISOR_PID_ENV = "AGG_SUPERVISOR_PID"
STARTED_AT_ENV = "AGG_STARTED_AT"
PR_SET_PDEATHSIG = 1


class _Formatter(logging.Formatter):
    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = (f"{stamp}.{int(record.msecs):03d}Z {record.levelname.lower():7} "
                f"role={self.role} pid={os.getpid()} {record.getMessage()}")
        if record.exc_info and record.levelno >= logging.ERROR:
            # A bug's traceback goes to the operator's log, never to a client.
            line += "\n" + self.formatException(record.exc_info)
        return line


class _JsonFormatter(_Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = {"time": f"{stamp}.{int(record.msecs):03d}Z", "level": record.levelname.lower(),
                "role": self.role, "pid": os.getpid(), "message": record.getMessage()}
        if record.exc_info and record.levelno >= logging.ERROR:
            line["traceback"] = self.formatException(record.exc_info)
        # ensure_ascii: a line stays one line and plain ASCII whatever a message holds.
        return json.dumps(line)


def setup_logging(role: str, level: str = "info", fmt: str = "text") -> logging.Logger:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter(role) if fmt == "json" else _Formatter(role))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's own loggers would print in their own format; route them here.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    return logging.getLogger("agg." + role.split(".")[0])


def supervised() -> bool:
    return os.environ.get(SUPERVISED_ENV) == "1"


def die_with_supervisor() -> None:
    """Ask Linux for SIGTERM when the supervisor dies, so that a supervisor
    killed with SIGKILL leaves no orphan holding ports and shards. Done here in
    the child, not in a preexec_fn, which is unsafe in the threaded supervisor."""
    if not supervised():
        return
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return  # not Linux: the supervisor still stops its children on a signal
    expected = os.environ.get(SUPERVISOR_PID_ENV)
    if expected and os.getppid() != int(expected):
        os._exit(1)  # the supervisor died before we could ask


def started_at() -> float:
    """When the system started: the supervisor's start, or this process's."""
    try:
        return float(os.environ[STARTED_AT_ENV])
    except (KeyError, ValueError):
        return time.time()


def stop_signals(handler: Callable[[int, Any], None]) -> Dict[int, Any]:
    """Route the signals that stop a process to ``handler``; return the previous
    handlers. Supervised, SIGINT and SIGHUP are ignored: they come from a
    terminal to the whole group, and the supervisor orders the stop."""
    mine = (signal.SIGTERM,) if supervised() else (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous: Dict[int, Any] = {}
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        previous[signum] = signal.signal(signum, handler if signum in mine else signal.SIG_IGN)
    return previous


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class StopFlag:
    """Set by SIGTERM/SIGHUP/SIGINT (see ``stop_signals``); outside a supervisor
    a second signal exits at once with status 1. ``signum`` is the first signal."""

    def __init__(self) -> None:
        self.stop = False
        self.signum = 0
        die_with_supervisor()
        stop_signals(self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.stop:
            if supervised():
                return  # the group's SIGTERM, then the supervisor's: one stop
            os._exit(1)
        self.stop = True
        self.signum = signum

    def __bool__(self) -> bool:
        return self.stop


def announce_ready(config: Config, role: str, index: int = 0,
                   endpoint: Optional[str] = None, ctx: Optional[zmq.Context] = None) -> None:
    """Send READY to the supervisor's control socket, if there is a supervisor.

    Ready is also where the child's startup ends: what it built (modules,
    classes, its sockets' objects) lives as long as it does, so it is frozen
    out of the collector's reach. Each full collection would walk it again,
    a pause of tens of ms in the loop that answers refusals.
    """
    gc.freeze()
    if not supervised():
        return
    ctx = ctx or zmq.Context.instance()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 2000)
    sock.connect(config.endpoint("control"))
    sock.send_multipart(protocol.encode(protocol.READY, Ready(role, index, os.getpid(), endpoint)))
    sock.close()


class Heartbeat:
    """ALIVE messages to the supervisor's control socket, at most one per
    ``EVERY`` seconds, never blocking; nothing outside a supervisor."""

    EVERY = 1.0

    def __init__(self, config: Config) -> None:
        self.sock: Optional[zmq.Socket] = None
        self.last = 0.0
        if supervised():
            self.sock = zmq.Context.instance().socket(zmq.PUSH)
            self.sock.setsockopt(zmq.LINGER, 0)
            self.sock.setsockopt(zmq.SNDHWM, 10)
            self.sock.connect(config.endpoint("control"))
            self.message = protocol.encode(protocol.ALIVE, Alive(os.getpid()))

    def beat(self) -> None:
        now = time.monotonic()
        if self.sock is None or now - self.last < self.EVERY:
            return
        self.last = now
        try:
            self.sock.send_multipart(self.message, zmq.NOBLOCK)
        except zmq.Again:
            pass  # the supervisor is not reading; it has its own problems

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


T = TypeVar("T")


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)``, on uvloop where it is installed (uvicorn picks it
    for the front too)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
