"""A real agg for agg-bench to measure, and what it measures of its processes
and of the machine (fsync latency, CPU time, peak RSS)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, Dict, List


def fsync_latency(directory: str, rounds: int = 200) -> Dict[str, float]:
    path = os.path.join(directory, "fsync-probe")
    times = []
    with open(path, "wb") as fh:
        for _ in range(rounds):
            fh.write(os.urandom(4096))
            start = time.perf_counter()
            fh.flush()
            os.fsync(fh.fileno())
            times.append((time.perf_counter() - start) * 1000)
    os.unlink(path)
    times.sort()
    return {"p50_ms": round(times[len(times) // 2], 3), "p99_ms": round(times[int(len(times) * 0.99)], 3)}


def peak_rss(pids: Dict[str, int]) -> Dict[str, float]:
    """VmHWM (peak resident set) of each process, in MiB."""
    out = {}
    for name, pid in pids.items():
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        out[name] = round(int(line.split()[1]) / 1024, 1)
        except OSError:
            pass
    return out


def cpu_seconds(pids: Dict[str, int]) -> Dict[str, float]:
    """User plus system CPU time of each process so far, all its threads included."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for name, pid in pids.items():
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[name] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return out


class System:
    """A real ``agg run`` on a temporary data directory, for one measurement."""

    def __init__(self, base: str, settings: List[str], agg_path: str = "") -> None:
        self.base = base
        self.run_dir = os.path.join(base, "run")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGG_")}
        if agg_path:  # another checkout of agg under test (before/after comparisons)
            env["PYTHONPATH"] = os.path.abspath(agg_path)
        self.log = open(os.path.join(base, "agg.log"), "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agg", "run", "--data-dir", os.path.join(base, "data"),
             "--run-dir", self.run_dir, "--http-port", "0", "--ingest-endpoint", "tcp://127.0.0.1:0",
             "--log-level", "warning", *settings],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=base)
        deadline = time.monotonic() + 60
        self.endpoints: Dict[str, Any] = {}
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.close()
                with open(os.path.join(base, "agg.log"), "rb") as fh:  # the directory may not outlive us
                    said = fh.read()[-2000:].decode("utf-8", "replace").strip()
                raise RuntimeError(f"agg exited with status {self.proc.returncode}; its log ends:\n{said}")
            try:
                with open(os.path.join(self.run_dir, "endpoints.json")) as fh:
                    info = json.load(fh)
                if info.get("pid") == self.proc.pid:
                    self.endpoints = info
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        raise RuntimeError("agg did not become ready within 60 s")

    def pids(self) -> Dict[str, int]:
        return {"supervisor": self.proc.pid, **self.endpoints["children"]}

    def crash(self) -> None:
        """SIGKILL every agg process at once, as a power cut would leave it."""
        for pid in self.pids().values():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        self.log.close()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class BareSystem(System):
    """The bare Falcon app (``agg.tools.bench.bare``), with System's interface
    (its own start, and no children)."""

    def __init__(self, base: str) -> None:  # not System.__init__: nothing of agg starts here
        self.log = open(os.path.join(base, "bare.log"), "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "agg.tools.bench.bare"], stdout=subprocess.PIPE,
                                     stderr=self.log, stdin=subprocess.DEVNULL, cwd=base)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        if not line.startswith("http://"):
            self.stop()
            raise RuntimeError(f"the bare app did not start; see {base}/bare.log")
        self.endpoints: Dict[str, Any] = {"http": line}

    def pids(self) -> Dict[str, int]:
        return {"bare": self.proc.pid}
