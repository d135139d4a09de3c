"""agg-bench's one-at-a-time phases: what a single publisher that waits for
each answer sees.

``ack_latency``: one keep-alive connection, one event per request, the next
sent when the last is answered; nothing else runs, so the figures are agg's
own latency from request to acknowledgement (after commit and flush).

``seed_publisher``: the publisher of the service agg replaces, as
``SEED-API.md`` describes it: one ``httpx.AsyncClient``, each ``POST
/publish`` of one event awaited, then a 1 ms sleep, for the seed demo's 5,000
events. Run against agg and against the bare app, the ratio of the two times
is what a user who switches notices.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Dict, List

from ...client import publish_request, read_response
from .workload import workload


def _percentiles(lat: List[float]) -> Dict[str, float]:
    lat = sorted(lat)
    return {"p50_ms": round(lat[len(lat) // 2] * 1000, 3),
            "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 3)}


def ack_latency(url: str, count: int, seed: int, time_limit: float) -> Dict[str, Any]:
    host, port = url.split("//")[1].rsplit(":", 1)
    bodies = [publish_request(json.dumps(e).encode())
              for e in workload(count, 0.0, "random", 10, seed)]

    async def run() -> List[float]:
        reader, writer = await asyncio.open_connection(host, int(port))
        lat: List[float] = []
        deadline = time.monotonic() + time_limit
        try:
            for request in bodies:
                if time.monotonic() > deadline:
                    break
                sent = time.perf_counter()
                writer.write(request)
                head, _body = await read_response(reader)
                if not head.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"answered {head.splitlines()[0]!r}")
                lat.append(time.perf_counter() - sent)
        finally:
            writer.close()
        return lat

    lat = asyncio.run(run())
    return {"requests": len(lat), **_percentiles(lat)}


def seed_publisher(url: str, events: List[Dict[str, Any]], time_limit: float) -> float:
    """Seconds the seed's publisher takes to send ``events`` one by one."""
    import httpx  # the seed publisher's own client; only this phase needs it

    async def run() -> float:
        deadline = time.monotonic() + time_limit
        async with httpx.AsyncClient(base_url=url, timeout=30.0) as client:
            start = time.perf_counter()
            for event in events:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the seed publisher ran out of its {time_limit:g} s")
                resp = await client.post("/publish", json=event)
                resp.raise_for_status()
                await asyncio.sleep(0.001)
            return time.perf_counter() - start

    return asyncio.run(run())
