"""``agg-bench``: how fast a real agg acknowledges events, after commit.

For each path (HTTP one event per request, HTTP batches, native ZeroMQ
batches) it starts a real ``agg run`` on a fresh temporary data directory,
drives it from separate load processes at full speed, then again at half of
the speed it found (for latency at half of peak load), and prints one table:
events/s acknowledged, p50/p99 latency of an acknowledgement, the rate of the
first and the last 100k events, the time agg takes to be ready again after
every process of it is killed, the CPU each process spent per event, and the
peak RSS of every agg process. It also measures the disk's fsync latency and
the seed demo (5,000 events, 20% duplicates) end to end, because those explain
most differences between machines.

Workload: ``--events`` events (``--single-events`` for the one-per-request
path, which is slower by nature), ``--duplicates`` of them resends of earlier
events, ids random UUID4s (``--ids random``) or time-ordered
(``--ids ordered``), over ``--topics`` topics, all derived from ``--seed``.
Every load loop is bounded by its event count and ``--time-limit``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import zmq

from . import lifecycle, protocol

PATHS = ("http-single", "http-batch", "zmq-batch")
WINDOW = 100_000  # "first and last 100k events"
BENCH_EPOCH = datetime.datetime(2025, 10, 1, tzinfo=datetime.timezone.utc)


# -- workload -------------------------------------------------------------------------------

def workload(count: int, duplicates: float, ids: str, topics: int, seed: int,
             part: int = 0, parts: int = 1) -> Iterator[Dict[str, Any]]:
    """Event number ``i`` for every ``i % parts == part``: deterministic, so that
    several load processes share one workload without passing it around.
    A fraction ``duplicates`` of them are resends of an earlier event."""
    for i in range(part, count, parts):
        digest = hashlib.blake2b(b"%d/%d" % (seed, i), digest_size=8).digest()
        n = i
        if i > 0 and int.from_bytes(digest[:4], "big") < duplicates * 2**32:
            n = int.from_bytes(digest[4:], "big") % i  # a resend of an earlier event
        yield make_event(n, ids, topics, seed)


def make_event(n: int, ids: str, topics: int, seed: int) -> Dict[str, Any]:
    digest = hashlib.blake2b(b"%d:%d" % (seed, n), digest_size=16).digest()
    if ids == "ordered":
        event_id = f"{1_700_000_000_000 + n:016d}-{seed}"
    else:
        event_id = str(uuid.UUID(bytes=digest, version=4))
    return {"topic": f"topic.{int.from_bytes(digest[:2], 'big') % topics:03d}",
            "event_id": event_id, "timestamp": timestamp_of(n), "source": "agg-bench",
            "payload": {"n": n, "amount": int.from_bytes(digest[2:5], "big")}}


def timestamp_of(n: int) -> str:
    """Event ``n``'s timestamp: 7 s after event ``n - 1``'s, from 2025-10-01, so
    that timestamps vary as they do in real traffic, months' ends included
    (1M events span 81 days)."""
    return (BENCH_EPOCH + datetime.timedelta(seconds=7 * n)).strftime("%Y-%m-%dT%H:%M:%SZ")


def batches(events: Iterator[Dict[str, Any]], size: int) -> Iterator[List[Dict[str, Any]]]:
    batch: List[Dict[str, Any]] = []
    for event in events:
        batch.append(event)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# -- load processes -------------------------------------------------------------------------

class Pacer:
    """Spaces requests to a target rate (events/s); no pacing when rate is 0."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.start = time.monotonic()
        self.sent = 0
        self.due = 0.0

    def reserve(self, n: int) -> None:
        """Count ``n`` events as the next to send."""
        self.due = self.start + self.sent / self.rate if self.rate else 0.0
        self.sent += n

    def wait(self) -> float:
        """Seconds until the reserved events may go."""
        return max(0.0, self.due - time.monotonic()) if self.rate else 0.0

    def delay(self, n: int) -> float:
        self.reserve(n)
        return self.wait()


def publish_request(body: bytes) -> bytes:
    """A keep-alive ``POST /publish`` of the JSON ``body``."""
    return (b"POST /publish HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body)


async def read_response(reader: asyncio.StreamReader) -> Tuple[bytes, bytes]:
    """The head and the body of one HTTP/1.1 response (agg's have a Content-Length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    return head, await reader.readexactly(length)


async def _http_load(host: str, port: int, bodies: Iterator[Tuple[int, bytes]], concurrency: int,
                     rate: float, deadline: float, out: List[Tuple[float, float, int]]) -> None:
    """Keep-alive HTTP/1.1 connections, each sending one request at a time."""
    pacer = Pacer(rate)

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for n, body in bodies:
                if time.monotonic() > deadline:
                    return
                wait = pacer.delay(n)
                if wait:
                    await asyncio.sleep(wait)
                sent = time.monotonic()
                while True:
                    writer.write(publish_request(body))
                    head, _answer = await read_response(reader)
                    if head.startswith(b"HTTP/1.1 200"):
                        break
                    if not head.startswith(b"HTTP/1.1 503"):
                        raise RuntimeError(f"agg answered {head.splitlines()[0]!r}")
                    await asyncio.sleep(0.01)  # overloaded: resend, as a publisher would
                out.append((sent, time.monotonic(), n))
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(concurrency)))


def _zmq_load(endpoint: str, frames: Iterator[Tuple[int, int, List[bytes]]], window: int, rate: float,
              deadline: float, out: List[Tuple[float, float, int]]) -> None:
    """One DEALER with up to ``window`` batches in flight."""
    sock: zmq.Socket = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    pacer = Pacer(rate)
    inflight: Dict[int, Tuple[float, int, List[bytes]]] = {}
    pending: Optional[Tuple[int, int, List[bytes]]] = None
    exhausted = False
    while (not exhausted or inflight) and time.monotonic() < deadline:
        wait = 1.0
        while not exhausted and len(inflight) < window:
            if pending is None:
                pending = next(frames, None)
                if pending is None:
                    exhausted = True
                    break
                pacer.reserve(pending[0])
            wait = pacer.wait()
            if wait > 0:
                break  # not yet: read answers meanwhile, so their latency stays true
            n, req_id, message = pending  # the id kept beside the message: no unpacking of 1,000 events
            pending = None
            inflight[req_id] = (time.monotonic(), n, message)
            sock.send_multipart(message)
        if not sock.poll(max(1, int(wait * 1000))):
            continue
        while True:
            try:
                frames_in = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            kind, body = protocol.decode(frames_in)
            req_id, ok, payload = protocol.split_reply(kind, body)
            sent, n, message = inflight.pop(req_id)
            if ok:
                out.append((sent, time.monotonic(), n))
            elif payload[0] in (protocol.ERR_OVERLOAD, protocol.ERR_UNAVAILABLE):
                inflight[req_id] = (sent, n, message)
                sock.send_multipart(message)  # resend, as a publisher would
            else:
                raise RuntimeError(f"agg refused a batch: {payload}")
    sock.close()


def load_process(spec: Dict[str, Any], part: int, ready: Any, go: Any, queue: Any) -> None:
    """One load process: encodes its share of the workload first (so that the
    measurement is of agg, not of the encoding), waits for ``go``, then sends it
    over one path and puts (sent, acknowledged, events) per request on ``queue``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    events = workload(spec["events"], spec["duplicates"], spec["ids"], spec["topics"],
                      spec["seed"], part, spec["loaders"])
    out: List[Tuple[float, float, int]] = []
    if spec["path"] == "zmq-batch":
        frames: List[Tuple[int, int, List[bytes]]] = [
            (len(b), i, protocol.encode(protocol.BATCH, [i, b]))
            for i, b in enumerate(batches(events, spec["batch"]), 1)]
    else:
        size = 1 if spec["path"] == "http-single" else spec["batch"]
        if size == 1:
            bodies = [(1, json.dumps(e).encode()) for e in events]
        else:
            bodies = [(len(b), json.dumps({"events": b}).encode()) for b in batches(events, size)]
    ready.release()
    go.wait()
    deadline = time.monotonic() + spec["time_limit"]
    rate = spec["rate"] / spec["loaders"]
    if spec["path"] == "zmq-batch":
        _zmq_load(spec["endpoint"], iter(frames), spec["concurrency"], rate, deadline, out)
    else:
        host, port = spec["endpoint"].split("//")[1].rsplit(":", 1)
        load = _http_load(host, int(port), iter(bodies), spec["concurrency"], rate, deadline, out)
        if rate:
            # Paced on asyncio's own loop: uvloop's timers tick in whole milliseconds, so
            # its sleeps of a fraction of one send requests in bursts.
            asyncio.run(load)
        else:
            # At full speed on uvloop, as agg's front: asyncio's loop cost the load process
            # ~15 µs more CPU per request, taken from the two cores agg runs on.
            lifecycle.run_loop(load)
    queue.put(out)


def drive(spec: Dict[str, Any]) -> List[Tuple[float, float, int]]:
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    ready = ctx.Semaphore(0)
    go = ctx.Event()
    procs = [ctx.Process(target=load_process, args=(spec, i, ready, go, queue))
             for i in range(spec["loaders"])]
    for proc in procs:
        proc.start()
    for _ in procs:
        if not ready.acquire(timeout=600):
            raise RuntimeError("a load process did not finish encoding its workload")
    go.set()
    results: List[Tuple[float, float, int]] = []
    for _ in procs:
        results += queue.get(timeout=spec["time_limit"] + 60)
    for proc in procs:
        proc.join()
    return sorted(results, key=lambda r: r[1])


# -- measuring ------------------------------------------------------------------------------

def summarize(results: List[Tuple[float, float, int]]) -> Dict[str, Any]:
    if not results:
        return {"events": 0, "events_per_s": 0.0}
    start = min(r[0] for r in results)
    end = results[-1][1]
    events = sum(r[2] for r in results)
    lat = sorted((r[1] - r[0]) * 1000 for r in results)
    out = {
        "events": events,
        "requests": len(results),
        "seconds": round(end - start, 3),
        "events_per_s": round(events / max(end - start, 1e-9), 1),
        "p50_ms": round(lat[len(lat) // 2], 2),
        "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 2),
    }
    if events >= 2 * WINDOW:
        out["first_100k_per_s"] = round(_window_rate(results, first=True), 1)
        out["last_100k_per_s"] = round(_window_rate(results, first=False), 1)
    return out


def _window_rate(results: List[Tuple[float, float, int]], first: bool) -> float:
    """Events/s over the first (or the last) 100k acknowledged events; ``results``
    are (sent, acknowledged, events) sorted by acknowledgement."""
    count = 0
    if first:
        start = results[0][0]
        for _sent, acked, n in results:
            count += n
            if count >= WINDOW:
                return count / max(acked - start, 1e-9)
    else:
        end = results[-1][1]
        for i in range(len(results) - 1, 0, -1):
            count += results[i][2]
            if count >= WINDOW:
                return count / max(end - results[i - 1][1], 1e-9)
    return 0.0


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

    def __init__(self, base: str, settings: List[str]) -> None:
        self.base = base
        self.run_dir = os.path.join(base, "run")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGG_")}
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
                raise RuntimeError(f"agg exited with status {self.proc.returncode}; see {base}/agg.log")
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


def seed_demo(base: str, settings: List[str]) -> float:
    """Seconds from the first request to the last acknowledgement of the seed demo."""
    from .publish import HttpSender, make_events, publish

    system = System(base, settings)
    try:
        events = make_events(5000, 0.2, 42)
        sender = HttpSender(system.endpoints["http"], 30)
        summary = publish(events, sender.send, 500, 4, 10, 1.0, time.monotonic() + 60)
        if summary.acknowledged != 5000 or summary.stored != 4000:
            raise RuntimeError(f"seed demo went wrong: {summary.to_json()}")
        return summary.elapsed
    finally:
        system.stop()


def bench_path(path: str, args: argparse.Namespace, settings: List[str]) -> Dict[str, Any]:
    base = tempfile.mkdtemp(prefix="agg-bench-", dir=args.dir)
    system = System(base, settings)
    try:
        spec = {
            "path": path, "events": args.single_events if path == "http-single" else args.events,
            "duplicates": args.duplicates, "ids": args.ids, "topics": args.topics, "seed": args.seed,
            "loaders": args.loaders, "batch": args.batch_size, "time_limit": args.time_limit,
            "concurrency": args.concurrency if path != "http-single" else args.single_concurrency,
            "rate": 0.0,
            "endpoint": system.endpoints["ingest" if path == "zmq-batch" else "http"],
        }
        cpu_before = cpu_seconds(system.pids())
        full = summarize(drive(spec))
        cpu_after = cpu_seconds(system.pids())
        # CPU per acknowledged event: steadier than events/s on a shared machine,
        # and it shows which process a change made cheaper.
        cpu_us = {name: round((cpu_after[name] - cpu_before[name]) / max(full["events"], 1) * 1e6, 1)
                  for name in cpu_after if name in cpu_before and name != "supervisor"}
        # Half of peak: new events (another seed), paced at half the rate just found, for
        # up to 20 s. Half of --events at most: 500 batches at the defaults, so that the
        # p99 is the 5th-worst batch (with a fifth, 200 batches, it was the 2nd-worst,
        # and one stall or none decided it).
        half_spec = dict(spec, seed=args.seed + 1, rate=full["events_per_s"] / 2,
                         events=max(1000, min(spec["events"] // 2, int(full["events_per_s"] * 10))))
        half = summarize(drive(half_spec))
        rss = peak_rss(system.pids())
        # Ready again after a crash: nothing may need a rebuild that grows with the data.
        system.crash()
        started = time.monotonic()
        system = System(base, settings)
        restart = time.monotonic() - started
        return {"path": path, "full": full,
                "half_load": {k: half[k] for k in ("events_per_s", "p50_ms", "p99_ms") if k in half},
                "cpu_us_per_event": cpu_us, "restart_after_kill_s": round(restart, 2),
                "peak_rss_mib": rss}
    finally:
        system.stop()
        shutil.rmtree(base, ignore_errors=True)


def _maybe(rate: Optional[float]) -> str:
    """A rate, or '-' where the run was shorter than two windows of 100k."""
    return "-" if rate is None else f"{rate:,.0f}"


def render(report: Dict[str, Any]) -> str:
    lines = [f"agg-bench: {report['config']}",
             f"disk fsync latency: p50 {report['fsync']['p50_ms']} ms, p99 {report['fsync']['p99_ms']} ms",
             f"seed demo (5,000 events, 20% duplicates, HTTP batches of 500): "
             f"{report['seed_demo_s'] * 1000:.0f} ms end to end", ""]
    head = (f"{'path':<12} {'events':>9} {'acked ev/s':>11} {'p50 ms':>7} {'p99 ms':>7} "
            f"{'half-load p50/p99 ms':>21} {'first 100k/s':>12} {'last 100k/s':>12} {'restart s':>9}")
    lines.append(head)
    lines.append("-" * len(head))
    for row in report["paths"]:
        f, h = row["full"], row["half_load"]
        lines.append(
            f"{row['path']:<12} {f['events']:>9,} {f['events_per_s']:>11,.0f} {f['p50_ms']:>7} "
            f"{f['p99_ms']:>7} {str(h.get('p50_ms')) + ' / ' + str(h.get('p99_ms')):>21} "
            f"{_maybe(f.get('first_100k_per_s')):>12} {_maybe(f.get('last_100k_per_s')):>12} "
            f"{row['restart_after_kill_s']:>9}")
    lines.append("")
    lines.append("restart s: from SIGKILL of every agg process to ready again, on the data just written")
    lines.append("CPU µs per acknowledged event, at full load: " + "; ".join(
        f"{row['path']}: " + ", ".join(f"{k} {v}" for k, v in row["cpu_us_per_event"].items())
        for row in report["paths"]))
    lines.append("peak RSS, MiB: " + "; ".join(
        f"{row['path']}: " + ", ".join(f"{k} {v}" for k, v in row["peak_rss_mib"].items())
        for row in report["paths"]))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="agg-bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, of {PATHS}")
    parser.add_argument("--events", type=int, default=1_000_000, help="events per batch path [1,000,000]")
    parser.add_argument("--single-events", type=int, default=100_000,
                        help="events for the one-event-per-request path [100,000]")
    parser.add_argument("--duplicates", type=float, default=0.2, help="fraction resent [0.2]")
    parser.add_argument("--ids", choices=("random", "ordered"), default="random",
                        help="uuid4 ids, or time-ordered ids [random]")
    parser.add_argument("--topics", type=int, default=100, help="distinct topics [100]")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=1000, help="events per batch [1000]")
    parser.add_argument("--loaders", type=int, default=1, help="load processes per path [1]")
    # 16 batches of 1,000: enough in flight to keep both cores busy through a group
    # commit (with 8, a third of the CPU sat idle between groups; measured).
    parser.add_argument("--concurrency", type=int, default=16,
                        help="batches in flight per load process [16]")
    parser.add_argument("--single-concurrency", type=int, default=64,
                        help="connections per load process for http-single [64]")
    parser.add_argument("--time-limit", type=float, default=600.0, help="per load phase, seconds [600]")
    parser.add_argument("--dir", default=None, help="where the temporary data directories go [$TMPDIR]")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("agg_settings", nargs="*", metavar="-- AGG FLAGS",
                        help="extra flags for agg run, after --, e.g. -- --workers 3")
    args = parser.parse_args(argv)
    paths = [p for p in args.paths.split(",") if p]
    if any(p not in PATHS for p in paths) or args.events < 1 or args.loaders < 1:
        parser.error(f"--paths takes {', '.join(PATHS)}; --events and --loaders at least 1")
    settings = list(args.agg_settings)
    probe = tempfile.mkdtemp(prefix="agg-bench-", dir=args.dir)
    try:
        fsync = fsync_latency(probe)
        demo = seed_demo(probe, settings)
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    report = {
        "config": (f"{args.events:,} events ({args.single_events:,} for http-single), "
                   f"{args.duplicates:.0%} duplicates, {args.ids} ids, {args.topics} topics, "
                   f"batches of {args.batch_size}, {os.cpu_count()} cores"),
        "fsync": fsync, "seed_demo_s": round(demo, 4),
        "paths": [bench_path(path, args, settings) for path in paths],
    }
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
