"""Fixtures that own real agg processes, real sockets and real SQLite files.

``agg_factory(**settings)`` starts ``python -m agg run`` on a fresh temporary
data directory (or a given one), with HTTP on a free port (port 0, read back
from the supervisor's ``endpoints.json``) and the native ingest on a free
port, and waits until it is READY and healthy: no sleeps. At teardown every
system still running gets SIGTERM; one that does not stop in time is killed
and the test fails.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

import pytest
import zmq

from agg import protocol
from agg.partition import partition_of

STOP_TIMEOUT = 30.0

# A shell started in the background without job control (``cmd &`` in a script, as a CI
# runner may start the suite) ignores SIGINT, and an ignored signal stays ignored across
# exec: every tool a test starts would then shrug off the Ctrl-C the test sends it. A
# handled signal is reset to its default at exec, so handling it here gives each child
# what a terminal gives it.
signal.signal(signal.SIGINT, signal.default_int_handler)


def wait_until(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02,
               message: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Optional[BaseException] = None
    while time.monotonic() < deadline:
        try:
            value = condition()
        except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
            last_error = exc
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {message}"
                         + (f" (last error: {last_error})" if last_error else ""))


def http_request(url: str, method: str = "GET", body: Any = None, raw: Optional[bytes] = None,
                 headers: Optional[Dict[str, str]] = None,
                 timeout: float = 30.0) -> Tuple[int, Dict[str, str], Any]:
    """One HTTP request; returns (status, headers, parsed JSON body or raw bytes)."""
    parsed = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=timeout)
    path = parsed.path + (f"?{parsed.query}" if parsed.query else "")
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    try:
        conn.request(method, path, body=data, headers=headers or {})
        resp = conn.getresponse()
        payload = resp.read()
        hdrs = {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()
    try:
        parsed_body: Any = json.loads(payload)
    except ValueError:
        parsed_body = payload
    return resp.status, hdrs, parsed_body


def cannot_run_here(reason: str) -> None:
    """A test that needs what this machine lacks (root, chattr): skipped here,
    but in CI (``CI`` set, as CI services do) it fails, so that the only tests
    of a promise cannot vanish from a run unnoticed."""
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(f"cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def topic_in(partition: int, partitions: int = 8) -> str:
    """A topic of ``partition``."""
    return next(t for t in (f"topic.{i}" for i in itertools.count()) if partition_of(t, partitions) == partition)


def topic_of_worker(index: int, workers: int = 2, partitions: int = 8) -> str:
    """A topic whose partition worker ``index`` owns (partition p is worker p % workers's)."""
    return next(t for t in (f"t{i}" for i in itertools.count())
                if partition_of(t, partitions) % workers == index)


class RawClient:
    """A DEALER speaking agg's frames to an ingest, a worker or the stats process."""

    def __init__(self, endpoint: str, **sockopts: Any) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        for name, value in sockopts.items():
            setattr(self.sock, name, value)
        self.sock.connect(endpoint)
        self.ids = itertools.count(1)

    def ask(self, frames: List[bytes], timeout: float = 5.0) -> Optional[Tuple[bytes, Any]]:
        """Send raw ``frames``; (kind, body) of the answer, or None if none came in time."""
        self.sock.send_multipart(frames)
        if not self.sock.poll(int(timeout * 1000)):
            return None
        return protocol.decode(self.sock.recv_multipart())

    def request(self, kind: bytes, body: Any, timeout: float = 10.0) -> Tuple[bool, Any]:
        """Send one request of ``kind``; (ok, payload) of its answer, matched by id."""
        req_id = next(self.ids)
        answer = self.ask(protocol.encode(kind, [req_id, body]), timeout)
        assert answer is not None, "no answer"
        answer_id, ok, payload = protocol.split_reply(*answer)
        assert answer_id == req_id
        return ok, payload

    def close(self) -> None:
        self.sock.close()


def make_event(topic: str = "user.created", event_id: str = "evt-1", **extra: Any) -> Dict[str, Any]:
    event = {"topic": topic, "event_id": event_id, "timestamp": "2025-10-21T14:30:00Z",
             "source": "tests", "payload": {"user_id": 123}}
    event.update(extra)
    return event


class Ledger:
    """What an agg must hold after the requests a test made so far: the keys
    stored and the counters, checked against it by ``check``."""

    def __init__(self) -> None:
        self.keys: Set[Tuple[str, str]] = set()
        self.received = self.duplicates = self.rejected = 0

    def accepted(self, keys: List[Tuple[str, str]]) -> List[int]:
        """Note a request of ``keys`` that was acknowledged; its statuses as they must be."""
        statuses = []
        for key in keys:
            statuses.append(0 if key in self.keys else 1)
            self.keys.add(key)
        self.received += len(keys)
        self.duplicates += statuses.count(0)
        return statuses

    def check(self, system: "AggSystem", rejected: bool = False) -> None:
        """The stored set and the counters (and the rejections) are as noted."""
        system.wait_stats(self.received, len(self.keys), self.duplicates)
        if rejected:
            wait_until(lambda: system.stats()["rejected"] == self.rejected,
                       message=f"{self.rejected} rejections counted")
        stored = [(e["topic"], e["event_id"]) for e in system.get("/events?limit=10000")[2]["events"]]
        assert len(stored) == len(self.keys) and set(stored) == self.keys


@pytest.fixture
def ledger() -> "Ledger":
    """One ledger for a test (a hypothesis test: for all its examples)."""
    return Ledger()


class AggSystem:
    """One ``agg run`` supervisor and its children, started for a test."""

    def __init__(self, base: str, data_dir: Optional[str] = None,
                 env: Optional[Dict[str, str]] = None, **settings: Any) -> None:
        self.base = base
        self.extra_env = dict(env or {})  # e.g. PYTHONPATH to a test's sitecustomize
        self.data_dir = data_dir or os.path.join(base, "data")
        self.run_dir = os.path.join(base, "run")
        self.settings = {"http-port": 0, "ingest-endpoint": "tcp://127.0.0.1:0",
                         "data-dir": self.data_dir, "run-dir": self.run_dir,
                         "supervisor-grace-s": 10}
        self.settings.update({k.replace("_", "-"): v for k, v in settings.items()})
        self.proc: Optional[subprocess.Popen] = None
        self.endpoints: Dict[str, Any] = {}
        self.log_path = os.path.join(base, "agg.log")
        self.rejections_expected = 0

    def command(self) -> List[str]:
        cmd = [sys.executable, "-m", "agg", "run"]
        for key, value in self.settings.items():
            cmd += [f"--{key}", str(value)]
        return cmd

    def start(self, wait: bool = True) -> "AggSystem":
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGG_")}
        env.update(self.extra_env)
        self.log = open(self.log_path, "ab")
        # Its own process group, so a test can kill the whole group, as a crash would.
        self.proc = subprocess.Popen(self.command(), env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=self.base, start_new_session=True)
        if wait:
            self.wait_ready()
        return self

    def read_endpoints(self) -> Optional[Dict[str, Any]]:
        try:
            with open(os.path.join(self.run_dir, "endpoints.json")) as fh:
                info = json.load(fh)
        except (OSError, ValueError):
            return None
        return info if self.proc and info.get("pid") == self.proc.pid else None

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> Any:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"agg exited with {self.proc.returncode}:\n{self.log_text()}")
            return self.read_endpoints()
        self.endpoints = wait_until(ready, timeout, message="agg READY")
        wait_until(lambda: self.get("/health")[0] == 200, timeout, message="healthy")

    @property
    def url(self) -> str:
        return self.endpoints["http"]

    @property
    def ingest(self) -> str:
        return self.endpoints["ingest"]

    def get(self, path: str) -> Tuple[int, Dict[str, str], Any]:
        return http_request(self.url + path)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Tuple[int, Dict[str, str], Any]:
        return http_request(self.url + path, "POST", body, **kwargs)

    def stats(self) -> Dict[str, Any]:
        status, _, body = self.get("/stats")
        assert status == 200, body
        return body

    def wait_stats(self, received: int, unique: int, duplicates: int, timeout: float = 10.0) -> Dict[str, Any]:
        """Wait until /stats shows these totals (snapshots travel asynchronously)."""
        want = (received, unique, duplicates)
        seen: List[Any] = []

        def match() -> Any:
            s = self.stats()
            seen[:] = [(s["received"], s["unique_processed"], s["duplicate_dropped"])]
            return s if seen[0] == want else None
        try:
            return wait_until(match, timeout, message=f"stats {want}")
        except AssertionError:
            raise AssertionError(f"stats never reached {want}; last seen {seen}") from None

    def expect_rejections(self, count: int) -> Dict[str, Any]:
        """Note ``count`` more rejected requests; wait until /stats counts them all."""
        self.rejections_expected += count
        want = self.rejections_expected
        return wait_until(lambda: (lambda s: s if s["rejected"] == want else None)(self.stats()),
                          message=f"{want} rejections counted")

    def child_pid(self, name: str) -> int:
        return int(self.endpoints["children"][name])

    def current_children(self) -> Dict[str, int]:
        """Child pids as the supervisor last wrote them (it rewrites them on restarts)."""
        info = self.read_endpoints()
        return dict(info["children"]) if info else {}

    def log_text(self) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                return fh.read().decode("utf-8", "replace")[-6000:]
        except OSError:
            return ""

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM the supervisor and wait; kill and fail if it hangs."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"agg did not stop within {timeout} s:\n{self.log_text()}") from None
        self.log.close()
        return self.proc.returncode


def hook_env(tmp_base: str, source: str) -> Dict[str, str]:
    """The environment under which every process of a spawned agg runs ``source``
    as it starts (its ``sitecustomize``): a test's hook into the real processes."""
    hook = os.path.join(tmp_base, "hook")
    os.makedirs(hook)
    with open(os.path.join(hook, "sitecustomize.py"), "w") as fh:
        fh.write(source)
    return {"PYTHONPATH": hook}


# Test hook: the event loop of one edge (the LoopLag named ROLE) is kept busy
# 50 ms at a time, with a millisecond free between, as a saturated one is.
BUSY_LOOP = """\
import time

import agg.looplag as looplag

ROLE = %r
_init = looplag.LoopLag.__init__


def _busy(loop):
    end = time.perf_counter() + 0.05
    while time.perf_counter() < end:
        pass
    loop.call_later(0.001, _busy, loop)


def __init__(self, name, limit_s):
    _init(self, name, limit_s)
    if name == ROLE:
        self.loop.call_soon(_busy, self.loop)


looplag.LoopLag.__init__ = __init__
"""


def busy_loop_env(tmp_base: str, role: str) -> Dict[str, str]:
    """The environment under which ``role``'s loop (front, ingest) is saturated."""
    return hook_env(tmp_base, BUSY_LOOP % role)


@pytest.fixture
def tmp_base() -> Iterator[str]:
    """A short temporary directory (ipc:// paths must stay under ~100 bytes)."""
    base = tempfile.mkdtemp(prefix="agg-", dir="/tmp")
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def agg_factory(tmp_base: str) -> Iterator[Callable[..., AggSystem]]:
    systems: List[AggSystem] = []
    counter = [0]

    def start(data_dir: Optional[str] = None, wait: bool = True, env: Optional[Dict[str, str]] = None,
              **settings: Any) -> AggSystem:
        counter[0] += 1
        base = os.path.join(tmp_base, f"s{counter[0]}")
        os.makedirs(base)
        system = AggSystem(base, data_dir or os.path.join(tmp_base, "data"), env, **settings)
        systems.append(system)
        return system.start(wait=wait)

    yield start
    hung = []
    for system in systems:
        if system.proc is not None and system.proc.poll() is None:
            try:
                system.stop()
            except AssertionError as exc:
                hung.append(str(exc))
    # Every child must be gone with its supervisor.
    for system in systems:
        for pid in (system.endpoints.get("children") or {}).values():
            _wait_gone(pid)
    if hung:
        pytest.fail("\n".join(hung))


@pytest.fixture
def agg(agg_factory: Callable[..., AggSystem]) -> AggSystem:
    return agg_factory()


def _shared_system() -> Iterator[AggSystem]:
    base = tempfile.mkdtemp(prefix="agg-", dir="/tmp")
    system = AggSystem(base, os.path.join(base, "data"))
    try:
        system.start()
        yield system
        children = list((system.endpoints.get("children") or {}).values())
        system.stop()
        for pid in children:
            _wait_gone(pid)
    finally:
        if system.proc is not None and system.proc.poll() is None:
            system.proc.kill()
            system.proc.wait()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def refusing_agg() -> Iterator[AggSystem]:
    """One agg for the tests of a module whose requests are all refused: none
    may store anything (each asserts that nothing is stored at all), and each
    counts the rejections it causes with ``expect_rejections``. Starting an
    agg takes seconds; tests that kill, stop, fill or store get their own."""
    yield from _shared_system()


@pytest.fixture(scope="module")
def reading_agg() -> Iterator[AggSystem]:
    """One agg for the tests of a module that only read it (or are refused
    without a count of it being asserted)."""
    yield from _shared_system()


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # A zombie of an exited supervisor's child is gone for our purpose.
        try:
            with open(f"/proc/{pid}/stat") as fh:
                return fh.read().split(")")[-1].split()[0] == "Z"
        except OSError:
            return True
    if not gone():
        try:
            wait_until(gone, timeout, message=f"pid {pid} to exit")
        except AssertionError:
            os.kill(pid, signal.SIGKILL)
            raise
