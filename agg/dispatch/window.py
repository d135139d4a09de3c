"""How much an edge may hand one worker at once.

A worker's queue is the events an edge has sent it (or is about to) and not
yet seen acknowledged. Left unbounded, a queue grows until requests wait for
seconds and time out, and the worker commits work whose publisher has given
up. So each worker gets at most what it commits in ``limits.queue_s``: its
rate is measured from its answers (a STORE that found N events ahead of it,
its own included, and was answered after T seconds says the worker commits
about N / T events a second), and the bound follows it, between a floor that
keeps a worker busy through a group commit and ``limits.max_inflight_events``.
Bytes are bounded too (``limits.max_inflight_bytes``). What does not fit is
refused at once (503, ERR overload): said, not queued.
"""

from __future__ import annotations

from typing import Optional

# Weight of a new rate sample: a few answers move the bound, one slow group does not.
SMOOTHING = 0.3


class Window:
    def __init__(self, name: str, max_events: int, max_bytes: int, queue_s: float, floor: int) -> None:
        self.name = name
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.queue_s = queue_s
        self.floor = min(floor, max_events)
        self.limit = max_events  # until the worker's rate is known
        self.rate: Optional[float] = None  # events/s, measured while a queue stood
        self.events = 0  # held: sent, waiting to be sent, or reserved for a body being read
        self.bytes = 0

    def refusal(self, events: int, size: int) -> Optional[str]:
        """Why ``events`` more (``size`` bytes) do not fit now, or None. An empty
        window takes anything, so that a request larger than the bound still passes
        when it is alone."""
        if self.events == 0:
            return None
        if self.events + events > self.limit:
            return (f"{self.name} has {self.events} events in flight, as many as it commits in "
                    f"{self.queue_s:g} s")
        if self.bytes + size > self.max_bytes:
            return f"{self.name} has {self.bytes} bytes of events in flight"
        return None

    def take(self, events: int, size: int) -> None:
        self.events += events
        self.bytes += size

    def give(self, events: int, size: int) -> None:
        self.events -= events
        self.bytes -= size

    def answered(self, ahead: int, events: int, seconds: float) -> None:
        """A STORE of ``events`` that found ``ahead`` events in flight (its own
        included) was answered after ``seconds``. Only a message that queued
        behind others says how fast the worker goes; one alone says only that
        it was not busy."""
        if ahead <= events or seconds <= 0:
            return
        sample = ahead / seconds
        self.rate = sample if self.rate is None else (1 - SMOOTHING) * self.rate + SMOOTHING * sample
        self.limit = int(min(self.max_events, max(self.floor, self.rate * self.queue_s)))
