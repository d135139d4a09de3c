"""``agg ctl status|restart CHILD|stop``: talk to a running supervisor, like circusctl.

Connects a DEALER to the supervisor's ``endpoints.ctl`` (see ``agg.ctlserver``),
found from the same configuration as ``agg run`` (``--data-dir``,
``--run-dir``, ``--config``, ``AGG_*``), sends one command and prints its
answer. Every failure is one line on stderr: exit 1 when agg is not running
there or does not answer, 2 for a command it refused.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from typing import List, Optional, Sequence

import msgspec
import zmq

from . import config as configmod
from . import protocol
from .protocol import ChildStatus, CtlAnswer, CtlCommand

_ids = itertools.count(1)


class CtlFailed(Exception):
    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def ask(config: configmod.Config, command: CtlCommand, timeout: float) -> CtlAnswer:
    """One command to the supervisor of ``config``; CtlFailed with one line if it fails."""
    endpoint = config.endpoint("ctl")
    where = f"--data-dir {config.data_dir}"
    if endpoint.startswith("ipc://") and not os.path.exists(endpoint[len("ipc://"):]):
        raise CtlFailed(f"agg is not running with {where} (no {endpoint[len('ipc://'):]}); "
                        "give the --data-dir (or --run-dir) of the agg you mean")
    sock: zmq.Socket = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        req_id = next(_ids)
        sock.send_multipart(protocol.encode(protocol.CTL, [req_id, command]))
        deadline = time.monotonic() + timeout
        while sock.poll(max(0, int((deadline - time.monotonic()) * 1000))):
            kind, body = protocol.decode(sock.recv_multipart())
            answer_id, ok, payload = protocol.split_reply(kind, body)
            if answer_id != req_id:
                continue
            if not ok:
                raise CtlFailed(str(payload[1]), 2)
            return msgspec.convert(payload, CtlAnswer)
    except protocol.ProtocolError as exc:
        raise CtlFailed(f"a bad answer from {endpoint}: {exc.reason}") from None
    finally:
        sock.close()
    raise CtlFailed(f"agg with {where} did not answer within {timeout:g} s "
                    f"(not running, or a stale {endpoint})")


def duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


def table(children: List[ChildStatus]) -> str:
    lines = [f"{'name':<10} {'pid':>7}  {'state':<10} {'uptime':>8} {'restarts':>8}"]
    for c in children:
        pid = str(c.pid) if c.pid is not None else "-"
        lines.append(f"{c.name:<10} {pid:>7}  {c.state:<10} {duration(c.uptime):>8} {c.restarts:>8}")
    return "\n".join(lines)


def wait_restarted(config: configmod.Config, name: str, old: ChildStatus, timeout: float) -> ChildStatus:
    """The child's new status once it is up again with a new pid."""
    deadline = time.monotonic() + timeout
    while True:
        found = [c for c in ask(config, CtlCommand("status"), timeout).children if c.name == name]
        if found and found[0].state == "up" and found[0].pid != old.pid:
            return found[0]
        if time.monotonic() > deadline:
            raise CtlFailed(f"{name} is not up again after {timeout:g} s; see agg ctl status")
        time.sleep(0.05)  # a poll of the supervisor's state, not a synchronisation


def gone(pid: int) -> bool:
    """``pid`` has exited (a zombie its parent has not reaped yet counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        time.sleep(0.05)
    return False


def run(args: argparse.Namespace, config: configmod.Config) -> int:
    if args.command == "status":
        print(table(ask(config, CtlCommand("status"), args.timeout).children))
    elif args.command == "restart":
        children = ask(config, CtlCommand("status"), args.timeout).children
        ask(config, CtlCommand("restart", args.child), args.timeout)  # refuses an unknown child
        old = next(c for c in children if c.name == args.child)
        new = wait_restarted(config, args.child, old, args.wait)
        print(f"{args.child} restarted: pid {old.pid} -> {new.pid}")
    else:
        pid = ask(config, CtlCommand("stop"), args.timeout).pid
        if not wait_gone(pid, args.wait):
            raise CtlFailed(f"agg (pid {pid}) is still stopping after {args.wait:g} s")
        print(f"agg (pid {pid}) stopped")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="agg ctl", description=(
        "Control a running agg over its supervisor's control socket (endpoints.ctl)."))
    p.add_argument("command", choices=("status", "restart", "stop"))
    p.add_argument("child", nargs="?", help="for restart: stats, worker.N, front or ingest")
    p.add_argument("--config", metavar="FILE", help="TOML configuration file of that agg")
    for key, what in (("data_dir", "the data directory of the agg to control [./data]"),
                      ("run_dir", "its run directory, if not DATA_DIR/run"),
                      ("endpoints.ctl", "its control socket, if not ipc://RUN_DIR/ctl.sock")):
        p.add_argument(configmod.flag_name(key), dest=configmod.dest_name(key), metavar="PATH",
                       help=what)
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer [5]")
    p.add_argument("--wait", type=float, default=60.0,
                   help="seconds restart and stop wait for the child to be up / agg to be gone [60]")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.command == "restart" and not args.child:
        p.error("restart needs the name of a child (see agg ctl status)")
    try:
        environ = {k: v for k, v in os.environ.items() if k != configmod.RESOLVED_ENV}
        config = configmod.load(args, environ)
        return run(args, config)
    except configmod.ConfigError as exc:
        print(f"agg ctl: config error: {exc}", file=sys.stderr)
        return 2
    except CtlFailed as exc:
        print(f"agg ctl: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 130
