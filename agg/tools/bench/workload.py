"""agg-bench's workload: deterministic events, so that several load processes
share one workload without passing it around, and a second run is all
duplicates."""

from __future__ import annotations

import datetime
import hashlib
import time
import uuid
from typing import Any, Dict, Iterator, List

BENCH_EPOCH = datetime.datetime(2025, 10, 1, tzinfo=datetime.timezone.utc)


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
