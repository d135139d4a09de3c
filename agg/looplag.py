"""How far behind its work an edge's event loop runs.

An edge (the front, the ingest) answers a refusal from the same event loop
that reads, decodes, dispatches and answers the requests it admitted. When
that loop is saturated, every new request waits behind the callbacks ahead
of it, and a 503 that should take a millisecond takes as long as the
backlog: under HTTP overload the front, not a worker, is what runs out
first. Admission bounds the decoding it lets in (``agg.admission``); this
sees the rest: a timer meant to fire every ``INTERVAL_S`` notes how late it
ran, and while its last run was later than ``limits.max_lag_s``, admission
refuses publishes from their head, which sheds the work that made the loop
late. The last run, not the time since it was due: a long turn that is still
going (a page of events to encode) is over when admission next runs, and
refusing for it would turn publishes away from a loop that has caught up.
"""

from __future__ import annotations

import asyncio
from typing import Optional

INTERVAL_S = 0.005


class LoopLag:
    """Runs only while the edge holds a publish (``start``, ``stop``): only then
    does it refuse by it, and an idle edge is not woken 200 times a second."""

    def __init__(self, name: str, limit_s: float) -> None:
        self.name = name
        self.limit_s = limit_s
        self.late = 0.0  # how late the timer's last run was, s
        self.loop = asyncio.get_running_loop()
        self.due = 0.0
        self.handle: Optional[asyncio.TimerHandle] = None

    def start(self) -> None:
        if self.handle is None:
            self.due = self.loop.time() + INTERVAL_S
            self.handle = self.loop.call_at(self.due, self._tick)

    def _tick(self) -> None:
        now = self.loop.time()
        self.late = now - self.due
        self.due = now + INTERVAL_S
        self.handle = self.loop.call_at(self.due, self._tick)

    def refusal(self) -> Optional[str]:
        if self.late > self.limit_s:
            return f"the {self.name} runs {self.late * 1000:.0f} ms behind the requests it holds"
        return None

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        self.late = 0.0
