"""One child process of the supervisor: its command, its process, what the
supervisor knows of it (READY, last sign of life, deaths, restarts, backoff).

A library of ``agg.supervisor``: no sockets, no loop; the supervisor decides.
"""

from __future__ import annotations

import collections
import logging
import subprocess
import sys
import time
from typing import Any, Deque, Dict, List, Optional

from . import config as configmod
from .config import Config
from .protocol import ChildStatus

log = logging.getLogger("agg.supervisor")

BACKOFF_START = 0.1
BACKOFF_MAX = 5.0


class Child:
    def __init__(self, name: str, role: str, index: int, module: str, args: List[str]) -> None:
        self.name = name
        self.role = role
        self.index = index
        self.command = [sys.executable, "-m", module] + args
        self.proc: Optional[subprocess.Popen] = None
        self.ready = False
        self.ready_at = 0.0  # monotonic time of its READY
        self.endpoint: Optional[str] = None
        self.started_at = 0.0
        self.last_beat = 0.0  # monotonic time of its last READY or ALIVE
        self.deaths: Deque[float] = collections.deque()
        self.restarts = 0
        self.backoff = BACKOFF_START
        self.restart_at: Optional[float] = None
        # Settings this child keeps across restarts (the port an edge first bound).
        self.sticky: Dict[str, Any] = {}
        # Set by ``agg ctl restart``: SIGKILL if still alive at this monotonic time.
        self.stop_by: Optional[float] = None

    def start(self, env: Dict[str, str], config: Config) -> None:
        self.ready = False
        self.restart_at = None
        self.stop_by = None
        self.started_at = time.monotonic()
        if self.sticky:
            env = dict(env, **{configmod.RESOLVED_ENV: config.replace(self.sticky).to_json()})
        self.proc = subprocess.Popen(self.command, env=env, stdin=subprocess.DEVNULL)
        log.info("started %s pid=%d", self.name, self.proc.pid)

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status(self, now: float) -> ChildStatus:
        """What ``agg ctl status`` shows of this child at monotonic time ``now``."""
        if self.alive():
            state = "restarting" if self.stop_by is not None else "up" if self.ready else "starting"
        else:
            state = "restarting" if self.restart_at is not None else "down"
        uptime = now - self.started_at if self.alive() else 0.0
        return ChildStatus(self.name, self.pid if self.alive() else None, round(uptime, 3),
                           self.restarts, state)
