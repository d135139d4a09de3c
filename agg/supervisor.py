"""Supervisor (``agg run``): starts every process, restarts the dead, stops all in order.

Binds:     PULL at ``endpoints.control``, where children send READY, then an
           ALIVE about every second from their loops; ROUTER at ``endpoints.ctl``
           for ``agg ctl`` (``agg.ctlserver``: status, restart a child, stop).
Connects:  PUB to ``endpoints.stats_in`` for its restart counts (``ctr.supervisor``).
Owns:      the child processes, ``DATA_DIR/agg-meta.json`` (via ``ensure_data_dir``),
           the lock ``RUN_DIR/agg.lock`` (one agg per data directory), and
           ``RUN_DIR/endpoints.json``, written once everything is READY.
Stops:     on SIGINT, SIGTERM or SIGHUP (logged; SIGHUP reloads nothing, the
           settings of a running system being fixed), or ``agg ctl stop``:
           children in reverse start order (front and ingest first, so nothing
           new arrives; then the workers, which commit and answer what they
           hold; then stats), each with SIGTERM, then SIGKILL after
           ``supervisor.grace_s``. A second signal kills at once.

Start order: stats, workers, then front and ingest; each stage waits for the
READY of its processes, never for a sleep. A child that dies after it has run
(READY for ``STARTED_AFTER``) is restarted at once: a crash of a working
process costs only its restart, however often it comes. A child that dies
while starting (before READY, or just after) is restarted after a backoff
that doubles from 0.1 s to 5 s; one that fails to start more than
``supervisor.max_restarts`` times within ``supervisor.restart_window_s`` makes
the supervisor give up, stop everything and exit 1. A child alive but silent
for ``supervisor.hang_s`` (stopped, deadlocked) is killed, and so restarted.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from typing import List, Optional

import zmq

from . import config as configmod
from . import lifecycle, protocol
from .config import Config
from .child import BACKOFF_MAX, BACKOFF_START, Child
from .ctlserver import ControlServer, CtlRefused
from .protocol import Alive, ChildStatus, Ready, SupervisorSnapshot
from .rundirs import lock_run_dir, prepare_dirs
from .sockets import drain

log = logging.getLogger("agg.supervisor")

ENDPOINTS_FILE = "endpoints.json"
STARTED_AFTER = 1.0  # READY this long: a death is a crash of a working child, not a failed start


class StartupFailed(Exception):
    pass


class Supervisor:
    def __init__(self, config: Config, stop: lifecycle.StopFlag) -> None:
        self.config = config
        self.stop = stop
        self.env = dict(os.environ)
        self.env[configmod.RESOLVED_ENV] = config.to_json()
        self.env[lifecycle.SUPERVISED_ENV] = "1"
        self.env[lifecycle.SUPERVISOR_PID_ENV] = str(os.getpid())
        self.env[lifecycle.STARTED_AT_ENV] = repr(time.time())
        self.started = False  # True once every stage is READY
        self.stats = Child("stats", "stats", 0, "agg.stats", [])
        self.workers = [Child(f"worker.{i}", "worker", i, "agg.worker", ["--index", str(i)])
                        for i in range(config.workers)]
        self.edges: List[Child] = []
        if config.http.enabled:
            self.edges.append(Child("front", "front", 0, "agg.front", []))
        if config.ingest.enabled:
            self.edges.append(Child("ingest", "ingest", 0, "agg.ingest", []))
        self.stages = [[self.stats], self.workers, self.edges]
        self.children = [c for stage in self.stages for c in stage]
        self.ctx = zmq.Context()
        self.control = self.ctx.socket(zmq.PULL)
        self.control.setsockopt(zmq.LINGER, 0)
        self.control.bind(config.endpoint("control"))
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.connect(config.endpoint("stats_in"))
        self.last_publish = 0.0
        # A child's death wakes the loop at once (SIGCHLD through a wakeup pipe), so that
        # its replacement starts now, not at the next tick.
        self.wakeup, wakeup_w = os.pipe()
        os.set_blocking(self.wakeup, False)
        os.set_blocking(wakeup_w, False)
        self.wakeup_w = wakeup_w
        signal.set_wakeup_fd(wakeup_w)
        signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
        self.poller = zmq.Poller()
        self.poller.register(self.control, zmq.POLLIN)
        self.poller.register(self.wakeup, zmq.POLLIN)
        self.ctl = ControlServer(self.ctx, config.endpoint("ctl"), self)
        self.poller.register(self.ctl.sock, zmq.POLLIN)

    # -- READY ----------------------------------------------------------------------------

    def read_control(self, timeout_ms: int) -> None:
        """Wait up to ``timeout_ms`` for a control message or a signal; take what came."""
        ready = dict(self.poller.poll(timeout_ms))
        if self.wakeup in ready:
            while True:
                try:
                    if not os.read(self.wakeup, 512):
                        break
                except BlockingIOError:
                    break
        if self.ctl.sock in ready:
            self.ctl.answer_pending()
        if self.control not in ready:
            return
        for frames in drain(self.control):
            try:
                kind = protocol.check_envelope(frames)
                if kind == protocol.ALIVE:
                    self.heard(protocol.unpack_as(frames[2], Alive).pid)
                elif kind == protocol.READY:
                    self.ready(protocol.unpack_as(frames[2], Ready))
            except protocol.ProtocolError as exc:
                log.warning("ignored a bad control message: %s", exc)

    def heard(self, pid: int) -> Optional[Child]:
        """The child ``pid`` is alive; None if it is of an earlier life, already replaced."""
        child = next((c for c in self.children if c.pid == pid), None)
        if child is not None:
            child.last_beat = time.monotonic()
        return child

    def ready(self, ready: Ready) -> None:
        child = self.heard(ready.pid)
        if child is None:
            return
        child.ready = True
        child.ready_at = time.monotonic()
        child.endpoint = ready.endpoint
        self.keep_endpoint(child)
        log.info("%s is ready (%s)", child.name, child.endpoint)
        if self.started:
            self.write_endpoints()  # new pid; a restarted edge may have a new port
            self.publish_restarts(force=True)

    def keep_endpoint(self, child: Child) -> None:
        """An edge configured with port 0 got a free port at its first start; its
        restarts bind that same port, so that publishers keep their address."""
        if child.endpoint is None or child.sticky:
            return
        if child.role == "front" and self.config.http.port == 0:
            child.sticky = {"http.port": int(child.endpoint.rsplit(":", 1)[1])}
        elif child.role == "ingest" and self.config.ingest.endpoint.endswith(":0"):
            child.sticky = {"ingest.endpoint": child.endpoint}

    def start_stage(self, stage: List[Child]) -> None:
        for child in stage:
            child.start(self.env, self.config)
        timeout = self.config.supervisor.ready_timeout_s
        while not all(c.ready for c in stage):
            if self.stop:
                raise StartupFailed("stopped by a signal during start-up")
            for child in stage:
                if not child.alive():
                    raise StartupFailed(f"{child.name} exited with status "
                                        f"{child.proc.returncode if child.proc else '?'} before READY")
            # The timeout counts silence: a child that beats while it loads (a worker
            # rebuilding a key index) is slow, not stuck.
            now = time.monotonic()
            late = [c.name for c in stage
                    if not c.ready and now - max(c.started_at, c.last_beat) > timeout]
            if late:
                raise StartupFailed(f"{', '.join(late)} not READY, and silent, for {timeout:g} s")
            self.read_control(100)

    def write_endpoints(self) -> None:
        info = {
            "pid": os.getpid(),
            "http": next((c.endpoint for c in self.edges if c.role == "front"), None),
            "ingest": next((c.endpoint for c in self.edges if c.role == "ingest"), None),
            "stats": self.config.endpoint("stats"),
            "workers": self.config.worker_endpoints(),
            "children": {c.name: c.pid for c in self.children},
        }
        path = os.path.join(self.config.run_dir, ENDPOINTS_FILE)
        with open(path + ".tmp", "w") as fh:
            json.dump(info, fh, indent=2)
        os.replace(path + ".tmp", path)

    # -- agg ctl (see agg.ctlserver) -------------------------------------------------------

    def statuses(self) -> List[ChildStatus]:
        now = time.monotonic()
        return [c.status(now) for c in self.children]

    def restart(self, name: str) -> str:
        child = next((c for c in self.children if c.name == name), None)
        if child is None:
            raise CtlRefused(f"no child named '{name}'; agg runs "
                             + ", ".join(c.name for c in self.children))
        if not self.started or not child.alive() or child.stop_by is not None:
            raise CtlRefused(f"{name} is not running now; see agg ctl status")
        log.info("agg ctl: restarting %s (pid %s)", name, child.pid)
        child.stop_by = time.monotonic() + self.config.supervisor.grace_s
        child.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        return f"restarting {name} (pid {child.pid})"

    def request_stop(self) -> str:
        log.info("agg ctl: stop requested")
        self.stop.stop = True
        return f"stopping agg (pid {os.getpid()})"

    # -- watching -------------------------------------------------------------------------

    def publish_restarts(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last_publish >= self.config.stats.heartbeat_s:
            snapshot = SupervisorSnapshot(
                os.getpid(), time.time(), {c.name: c.restarts for c in self.children},
                # Children dead or not READY yet: /health knows at once, not after stale_after_s.
                [c.name for c in self.children if not (c.alive() and c.ready)])
            self.pub.send_multipart([protocol.TOPIC_SUPER] + protocol.encode(protocol.SUPER, snapshot))
            self.last_publish = now

    def watch(self) -> int:
        """Restart dead children until a signal; return the exit status."""
        while not self.stop:
            self.read_control(100)
            if self.stop:
                break  # children that die now are stopping with us, not crashing
            now = time.monotonic()
            for child in self.children:
                if child.restart_at is not None:
                    if now >= child.restart_at:
                        child.restarts += 1
                        child.start(self.env, self.config)
                        self.publish_restarts(force=True)
                    continue
                if child.alive():
                    self.kill_if_hung(child, now)
                    continue
                if child.stop_by is not None:
                    log.info("%s stopped as agg ctl asked; starting it again", child.name)
                    child.restart_at = now  # asked for: no backoff, no count against flapping
                elif not self.schedule_restart(child, now):
                    return 1
                if child.restart_at is not None and child.restart_at <= now:
                    child.restarts += 1
                    child.start(self.env, self.config)
                self.publish_restarts(force=True)
            self.publish_restarts()
        return 0

    def schedule_restart(self, child: Child, now: float) -> bool:
        """Set when the dead ``child`` starts again; False to give up on it."""
        code = child.proc.returncode if child.proc else None
        if child.ready and now - child.ready_at >= STARTED_AFTER:
            log.warning("%s (pid %s) exited with status %s; restarting it", child.name, child.pid, code)
            child.backoff = BACKOFF_START
            child.restart_at = now
            return True
        child.deaths.append(now)
        window = self.config.supervisor.restart_window_s
        while child.deaths and now - child.deaths[0] > window:
            child.deaths.popleft()
        if len(child.deaths) > self.config.supervisor.max_restarts:
            log.error("%s failed to start %d times within %g s (last status %s); giving up",
                      child.name, len(child.deaths), window, code)
            return False
        log.warning("%s (pid %s) exited with status %s while starting; restarting in %.1f s",
                    child.name, child.pid, code, child.backoff)
        child.restart_at = now + child.backoff
        child.backoff = min(child.backoff * 2, BACKOFF_MAX)
        return True

    def kill_if_hung(self, child: Child, now: float) -> None:
        """SIGKILL a READY child whose loop has not turned for supervisor.hang_s
        (stopped, deadlocked, stuck in a syscall): the next turn of ``watch``
        finds it dead and restarts it, as after any crash."""
        if child.stop_by is not None and now > child.stop_by and child.proc is not None:
            log.warning("%s (pid %s) did not stop within %g s of agg ctl restart; killing it",
                        child.name, child.pid, self.config.supervisor.grace_s)
            child.proc.kill()
            return
        hang = self.config.supervisor.hang_s
        if hang and child.ready and child.proc is not None and now - child.last_beat > hang:
            log.error("%s (pid %s) has sent no sign of life for %.0f s; killing it",
                      child.name, child.pid, now - child.last_beat)
            child.proc.kill()
            child.last_beat = now  # once is enough

    # -- stopping -------------------------------------------------------------------------

    def stop_all(self) -> bool:
        """Stop every child, last stage first; True if none needed SIGKILL."""
        clean = True
        for stage in reversed(self.stages):
            running = [c for c in stage if c.alive()]
            for child in running:
                child.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            deadline = time.monotonic() + self.config.supervisor.grace_s
            for child in running:
                try:
                    child.proc.wait(max(0.0, deadline - time.monotonic()))  # type: ignore[union-attr]
                except subprocess.TimeoutExpired:
                    log.warning("%s (pid %s) did not stop within %g s; killing it",
                                child.name, child.pid, self.config.supervisor.grace_s)
                    child.proc.kill()  # type: ignore[union-attr]
                    child.proc.wait()  # type: ignore[union-attr]
                    clean = False
                else:
                    if child.proc.returncode not in (0, -signal.SIGTERM):  # type: ignore[union-attr]
                        log.warning("%s exited with status %s", child.name,
                                    child.proc.returncode)  # type: ignore[union-attr]
        return clean

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.close(self.wakeup)
        os.close(self.wakeup_w)
        self.control.close()
        self.ctl.close()
        self.pub.close()
        self.ctx.term()
        try:
            os.unlink(os.path.join(self.config.run_dir, ENDPOINTS_FILE))
        except FileNotFoundError:
            pass


def run(config: Config) -> int:
    stop = lifecycle.StopFlag()
    problem = prepare_dirs(config)
    if problem:
        log.error("%s", problem)
        return 2
    try:
        lock = lock_run_dir(config.run_dir)
    except OSError as exc:
        log.error("run_dir: cannot lock %s: %s", config.run_dir, exc.strerror)
        return 2
    if lock is None:
        log.error("run_dir: another agg is already running on %s", config.run_dir)
        return 2
    supervisor = Supervisor(config, stop)
    status = 0
    try:
        for stage in supervisor.stages:
            supervisor.start_stage(stage)
        supervisor.started = True
        supervisor.write_endpoints()
        supervisor.publish_restarts(force=True)
        http = next((c.endpoint for c in supervisor.edges if c.role == "front"), None)
        log.info("agg is ready: http %s, ingest %s, %d workers, %d partitions, data in %s",
                 http, next((c.endpoint for c in supervisor.edges if c.role == "ingest"), None),
                 config.workers, config.partitions, config.data_dir)
        status = supervisor.watch()
    except StartupFailed as exc:
        log.error("start-up failed: %s", exc)
        status = 1
    finally:
        if stop.signum:
            log.info("%s: stopping every process", lifecycle.signal_name(stop.signum))
        else:
            log.info("stopping")
        if not supervisor.stop_all():
            status = status or 1
        supervisor.close()
        lock.close()
    log.info("stopped with status %d", status)
    return status
