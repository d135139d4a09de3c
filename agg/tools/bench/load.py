"""agg-bench's load processes: each encodes its share of the workload before
the clock starts, then drives one path (HTTP keep-alive connections, or a
DEALER with batches in flight) and reports (sent, acknowledged, events) per
request. Every loop is bounded by its workload and a deadline."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import signal
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

import zmq

from ... import lifecycle, protocol
from ...client import publish_request, read_response
from .workload import Pacer, batches, workload


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
        size = 1 if spec["path"].endswith("-single") else spec["batch"]
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
            # PERF: at full speed on uvloop, as agg's front: less of the CPU agg runs on.
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
