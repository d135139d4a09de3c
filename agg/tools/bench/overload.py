"""agg-bench's overload phase: open-loop load at a multiple of the capacity
just measured, over HTTP and natively, for ``--overload-s`` seconds.

Open loop: requests go out on a schedule (``factor`` times the events/s agg
acknowledged in a closed-loop run a moment before), whether or not earlier
ones were answered, as independent publishers would send them; a refused
request is not resent, so the offered load stays at the factor. What is
measured, per request from its first byte: how soon a refusal (503, or an
``overload`` error frame) came and whether it carried Retry-After, how soon
an admitted request was acknowledged, how many connections closed without an
answer, and the goodput (acknowledged events/s) as a fraction of capacity.

Events are fresh all the way: a batch body is a template whose event ids
carry the batch's number, filled in per request, so that no load process has
to hold millions of encoded events.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import signal
import time
from typing import Any, Dict, List, Optional, Tuple

import zmq

from ... import protocol
from ...client import publish_request, read_response

IDLE_S = 5.0  # an idle connection older than this is closed, not reused
MARK = b"#########"  # nine characters: a batch number, filled in per request
Result = Tuple[str, float, int, int, bool]  # (outcome, seconds, events, stored, retry-after)


def template(batch: int, part: int) -> List[Dict[str, Any]]:
    return [{"topic": f"overload.{k % 50:02d}", "event_id": f"{part}-{MARK.decode()}-{k:05d}",
             "timestamp": "2025-10-21T14:30:00Z", "source": "agg-bench",
             "payload": {"k": k, "note": "overload"}} for k in range(batch)]


async def _http(host: str, port: int, batch: int, part: int, rate: float, seconds: float,
                max_connections: int, out: List[Result]) -> None:
    body_of = json.dumps({"events": template(batch, part)}).encode()
    # Idle keep-alive connections, with when each went idle. One idle past IDLE_S is closed,
    # not reused: the front closes a connection that begins no request in http.header_timeout_s
    # (10 s), and a request written into such a race is no measure of agg.
    idle: List[Tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
    opened = [0]
    pending = set()

    async def one(n: int) -> None:
        while idle and time.monotonic() - idle[-1][2] > IDLE_S:
            idle.pop()[1].close()
            opened[0] -= 1
        if idle:
            reader, writer, _since = idle.pop()
        elif opened[0] < max_connections:
            opened[0] += 1
            reader, writer = await asyncio.open_connection(host, port)
        else:
            out.append(("client_saturated", 0.0, batch, 0, False))
            return
        request = publish_request(body_of.replace(MARK, b"%09d" % n))
        start = time.perf_counter()
        try:
            writer.write(request)
            head, answer = await read_response(reader)
        except (ConnectionError, asyncio.IncompleteReadError):
            opened[0] -= 1
            writer.close()
            out.append(("reset", time.perf_counter() - start, batch, 0, False))
            return
        took = time.perf_counter() - start
        status, lower = head[9:12], head.lower()
        if status == b"200":
            out.append(("ok", took, batch, json.loads(answer)["stored"], False))
        else:
            out.append(("refused" if status == b"503" else "http_" + status.decode(), took, batch, 0,
                        b"retry-after:" in lower))
        if b"connection: close" in lower:
            opened[0] -= 1
            writer.close()
        else:
            idle.append((reader, writer, time.monotonic()))

    start = time.monotonic()
    n = 0
    while True:
        due = start + n * batch / rate
        if due - start >= seconds:
            break
        wait = due - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        task = asyncio.ensure_future(one(n))
        pending.add(task)
        task.add_done_callback(pending.discard)
        n += 1
    if pending:
        await asyncio.wait(pending, timeout=30)
    for _reader, writer, _since in idle:
        writer.close()


def _native(endpoint: str, batch: int, part: int, rate: float, seconds: float, out: List[Result]) -> None:
    events = template(batch, part)
    sock: zmq.Socket = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    sent: Dict[int, float] = {}
    start = time.monotonic()
    n = 0
    end = start + seconds
    def answers() -> None:
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            req_id, ok, payload = protocol.split_reply(*protocol.decode(frames))
            if req_id not in sent:  # an answer that names no request (an older agg's refusals)
                out.append(("unmatched", 0.0, batch, 0, False))
                continue
            took = time.perf_counter() - sent.pop(req_id)
            if ok:
                out.append(("ok", took, batch, bytes(payload).count(protocol.STORED), False))
            else:
                # Natively, the Retry-After of a 503 is the error frame's "overload" code.
                refused = payload[0] in (protocol.ERR_OVERLOAD, protocol.ERR_UNAVAILABLE)
                out.append(("refused" if refused else "error", took, batch, 0, refused))

    while time.monotonic() < end or (sent and time.monotonic() < end + 30):
        # Answers first, each time round: a load process that fell behind its schedule
        # (this machine's two cores are shared with agg) would otherwise send its late
        # batches first and read the answers waiting for it after them, and count its
        # own delay as agg's.
        answers()
        due = start + n * batch / rate
        now = time.monotonic()
        if now >= due and due - start < seconds:
            for event in events:
                event["event_id"] = f"{part}-{n:09d}-{event['payload']['k']:05d}"
            sent[n + 1] = time.perf_counter()
            sock.send_multipart(protocol.encode(protocol.BATCH, [n + 1, events]))
            n += 1
            continue
        wait = max(0.0, due - now) if due - start < seconds else 0.05
        sock.poll(max(1, int(wait * 1000)))
    unmatched = sum(1 for r in out if r[0] == "unmatched")
    for _ in range(len(sent) - unmatched):  # those answered without their id are not lost
        out.append(("no_answer", seconds, batch, 0, False))
    sock.close()


def _process(spec: Dict[str, Any], part: int, queue: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out: List[Result] = []
    rate = spec["rate"] / spec["loaders"]
    if spec["transport"] == "zmq":
        _native(spec["endpoint"], spec["batch"], part, rate, spec["seconds"], out)
    else:
        host, port = spec["endpoint"].split("//")[1].rsplit(":", 1)
        asyncio.run(_http(host, int(port), spec["batch"], part, rate, spec["seconds"],
                          spec["max_connections"], out))
    queue.put(out)


def overload(transport: str, endpoint: str, capacity: float, factor: float, seconds: float,
             batch: int, loaders: int, max_connections: int = 400) -> Dict[str, Any]:
    """Run the open-loop load and summarise it."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    spec = {"transport": transport, "endpoint": endpoint, "rate": capacity * factor,
            "seconds": seconds, "batch": batch, "loaders": loaders, "max_connections": max_connections}
    procs = [ctx.Process(target=_process, args=(spec, i, queue)) for i in range(loaders)]
    for proc in procs:
        proc.start()
    results: List[Result] = []
    for _ in procs:
        results += queue.get(timeout=seconds + 120)
    for proc in procs:
        proc.join()
    return summarize(results, capacity, factor, seconds)


def _pct(values: List[float], q: float) -> Optional[float]:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(len(values) * q))] * 1000, 1)


def summarize(results: List[Result], capacity: float, factor: float, seconds: float) -> Dict[str, Any]:
    ok = [r for r in results if r[0] == "ok"]
    refused = [r for r in results if r[0] == "refused"]
    acked = sum(r[2] for r in ok)
    return {
        "capacity_events_per_s": round(capacity), "offered_factor": factor, "seconds": seconds,
        "requests": len(results), "acknowledged": len(ok), "refused": len(refused),
        "refused_p50_ms": _pct([r[1] for r in refused], 0.5),
        "refused_p99_ms": _pct([r[1] for r in refused], 0.99),
        "refused_without_retry_after": sum(1 for r in refused if not r[4]),
        "admitted_p50_ms": _pct([r[1] for r in ok], 0.5),
        "admitted_p99_ms": _pct([r[1] for r in ok], 0.99),
        "goodput_events_per_s": round(acked / seconds),
        "goodput_of_capacity": round(acked / seconds / max(capacity, 1e-9), 3),
        "acked_stored": sum(r[3] for r in ok),
        "other": {name: sum(1 for r in results if r[0] == name)
                  for name in sorted({r[0] for r in results} - {"ok", "refused"})},
    }
