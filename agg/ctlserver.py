"""The supervisor's control socket: what ``agg ctl`` talks to.

Binds:     ROUTER at ``endpoints.ctl`` (``ipc://RUN_DIR/ctl.sock``: only the
           user who runs agg can reach it; it has no authentication of its own).
Connects:  nothing.
Owns:      nothing; the supervisor does what a command asks (``Controls``).
Stops:     with the supervisor, which polls ``sock`` in its loop and calls
           ``answer_pending()`` when it is readable.

Frames (see ``agg.protocol``)::

    agg ctl -> supervisor:  [b"agg1", b"O", msgpack([req_id, CtlCommand])]
    supervisor -> agg ctl:  [b"agg1", b"K", msgpack([req_id, CtlAnswer])]
                        or  [b"agg1", b"E", msgpack([req_id, code, reason, []])]

Every message gets one answer, whatever it holds: a bad one an ERR, never an
exception out of the supervisor's loop.
"""

from __future__ import annotations

import logging
import os
from typing import Any, List, Protocol

import msgspec
import zmq

from . import protocol
from .protocol import ChildStatus, CtlAnswer, CtlCommand
from .sockets import drain

log = logging.getLogger("agg.supervisor")

COMMANDS = ("status", "restart", "stop")


class CtlRefused(Exception):
    """A command that cannot be done now (an unknown child, still starting)."""


class Controls(Protocol):
    """What the supervisor offers its control socket."""

    def statuses(self) -> List[ChildStatus]: ...

    def restart(self, name: str) -> str: ...

    def request_stop(self) -> str: ...


class ControlServer:
    def __init__(self, ctx: zmq.Context, endpoint: str, controls: Controls) -> None:
        self.controls = controls
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, 64 * 1024)  # commands are small
        self.sock.bind(endpoint)

    def answer_pending(self) -> None:
        for frames in drain(self.sock):
            if len(frames) < 2:
                continue  # no routing id: nobody to answer
            rid, rest = frames[0], frames[1:]
            try:
                self.sock.send_multipart([rid] + self.answer(rest), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # the caller is gone

    def answer(self, frames: List[bytes]) -> List[bytes]:
        req_id: Any = protocol.request_id(bytes(frames[2])) if len(frames) == 3 else None
        try:
            kind = protocol.check_envelope(frames)
            if kind != protocol.CTL:
                raise protocol.ProtocolError(protocol.ERR_INVALID, "expected a CTL request")
            req_id, rest = protocol.split_head(bytes(frames[2]))
            command = msgspec.msgpack.decode(rest, type=CtlCommand)
            return protocol.encode_ok(req_id, self.run(command))
        except protocol.ProtocolError as exc:
            return protocol.encode_err(req_id, exc.code, exc.reason)
        except msgspec.DecodeError as exc:
            return protocol.encode_err(req_id, protocol.ERR_INVALID, f"not a CtlCommand: {exc}")
        except CtlRefused as exc:
            return protocol.encode_err(req_id, protocol.ERR_INVALID, str(exc))

    def run(self, command: CtlCommand) -> CtlAnswer:
        pid = os.getpid()
        if command.command == "status":
            return CtlAnswer("ok", pid, self.controls.statuses())
        if command.command == "restart":
            return CtlAnswer(self.controls.restart(command.child), pid, self.controls.statuses())
        if command.command == "stop":
            return CtlAnswer(self.controls.request_stop(), pid)
        raise CtlRefused(f"unknown command '{command.command}'; expected one of {', '.join(COMMANDS)}")

    def close(self) -> None:
        self.sock.close()
