"""What an edge (the front, the ingest) takes in, decided before it reads or
decodes a request.

A request holds the edge's memory and CPU from its first byte until it is
answered, so the edge bounds them up front, and refuses at once (503 with
Retry-After, natively ERR overload) rather than take in a body it would have
to refuse later:

- requests held (being read, checked or awaiting commit): ``http.max_publishes``
  or ``ingest.max_batches``;
- bytes held: ``limits.max_reading_bytes``, counted from a request's size when
  known (Content-Length, a message's length), as they arrive otherwise;
- the workers' room: a request's events (estimated from its size, with the
  bytes per event measured on the requests before it) are reserved in the
  workers' windows (``WorkerPool.reserve``) until it is decoded and its
  events go to the workers as themselves;
- the edge's own CPU: under HTTP overload the front runs out before the
  workers do, and natively the ingest nearly does. A refusal is answered by
  the same event loop that decodes what was admitted, so it waits for every
  decode ahead of it. While a publish is held, two things bound that wait by
  ``limits.max_lag_s``: the decoding still ahead (the events of whole
  batches admitted and not decoded yet, at the CPU time per event measured
  on the requests before them: admitted in one read of the socket, thirty
  batches would hold the loop for a quarter of a second once they all run),
  and how late the loop runs now (``agg.looplag``: the bodies read and
  decoded, the answers, a collection, the scheduler).
"""

from __future__ import annotations

import time
from typing import Optional

from .dispatch import Overloaded, Reservation, WorkerPool
from .looplag import LoopLag

# What a request's size says of its events, and the time to decode one, before any was measured.
FIRST_BYTES_PER_EVENT = 200.0
FIRST_CPU_S_PER_EVENT = 10e-6
SMOOTHING = 0.1
# The edge's CPU per event is measured over this many events at a time.
CPU_SAMPLE_EVENTS = 2000


class Refused(Exception):
    """Not admitted now: too much is held already."""


class Ticket:
    """What one admitted request holds; ``release`` gives it all back."""

    def __init__(self, admission: "Admission", size: int, undecoded: int,
                 reservation: Optional[Reservation]) -> None:
        self.admission = admission
        self.size = size
        self.undecoded = undecoded  # the estimate of its events due to be decoded, until they are
        self.reservation = reservation
        admission.undecoded += undecoded

    def grow(self, size: int) -> None:
        """The body turned out larger than reserved (no Content-Length): hold
        ``size`` bytes in all, or Refused."""
        admission = self.admission
        if admission.bytes - self.size + size > admission.max_bytes:
            raise Refused(f"the {admission.edge} holds {admission.bytes} bytes of requests already")
        admission.bytes += size - self.size
        self.size = size

    def read(self, events: int) -> None:
        """The body is read and checked: its events go to the workers now, as
        themselves, in place of the estimate held for them."""
        self.admission.learn(self.size, events)
        self.admission.undecoded -= self.undecoded
        self.undecoded = 0
        if self.reservation is not None:
            self.reservation.release()
            self.reservation = None

    def release(self) -> None:
        self.read(0)
        self.admission.publishes -= 1
        if not self.admission.publishes and self.admission.lag is not None:
            self.admission.lag.stop()
        self.admission.bytes -= self.size
        self.size = 0


class Admission:
    def __init__(self, edge: str, pool: WorkerPool, max_requests: int, max_bytes: int,
                 lag: Optional[LoopLag] = None) -> None:
        self.edge = edge
        self.lag = lag
        self.pool = pool
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.publishes = 0
        self.bytes = 0
        self.undecoded = 0  # events admitted and not decoded yet (estimated from their size)
        self.bytes_per_event = FIRST_BYTES_PER_EVENT
        self.cpu_s_per_event = FIRST_CPU_S_PER_EVENT
        self.sampled_events = 0  # events decoded since the CPU time below
        self.sampled_cpu = time.process_time()

    def refusal(self, size: int) -> Optional[str]:
        """Why a request of ``size`` bytes would be refused now, or None; takes nothing."""
        events = self.events_in(size)
        return self._held_refusal(size, events) or self.pool.refusal(events, size)

    def admit(self, size: Optional[int], whole: bool = False) -> Ticket:
        """Hold room for a request of ``size`` bytes (None: not known yet), or Refused.
        ``whole``: all its bytes are here (a native batch), so its decoding is due
        now, ahead of the next request's. An HTTP body is decoded only once it has
        arrived, and the loop reads the others' meanwhile: what it holds then is
        how late the loop runs."""
        size = size or 0
        events = self.events_in(size)
        reason = self._held_refusal(size, events)
        if reason is not None:
            raise Refused(reason)
        try:
            reservation = self.pool.reserve(events, size)
        except Overloaded as exc:
            raise Refused(str(exc)) from None
        if not self.publishes and self.lag is not None:
            self.lag.start()
        self.publishes += 1
        self.bytes += size
        return Ticket(self, size, events if whole else 0, reservation)

    def _held_refusal(self, size: int, events: int) -> Optional[str]:
        """Why the edge's own bounds (requests, bytes held, its loop's backlog)
        refuse ``size`` more bytes of about ``events`` events, or None."""
        if self.publishes >= self.max_requests:
            return f"the {self.edge} holds {self.publishes} requests already"
        if self.bytes and self.bytes + size > self.max_bytes:
            return f"the {self.edge} holds {self.bytes} bytes of requests already"
        if self.lag is None or not self.publishes:
            # First in line: nothing of the publishes waits ahead of it, and whatever made the
            # loop late (a page to encode) is not shed by refusing a publish.
            return None
        ahead = (self.undecoded + events) * self.cpu_s_per_event
        if self.undecoded and ahead > self.lag.limit_s:
            return (f"the {self.edge} has {self.undecoded} events to decode before this request, "
                    f"about {ahead * 1000:.0f} ms of its work")
        return self.lag.refusal()

    def events_in(self, size: int) -> int:
        """About how many events a body of ``size`` bytes holds."""
        return max(1, int(size / self.bytes_per_event))

    def learn(self, size: int, events: int) -> None:
        if events and size:
            self.bytes_per_event += SMOOTHING * (size / events - self.bytes_per_event)
        self.sampled_events += events
        if self.sampled_events >= CPU_SAMPLE_EVENTS:
            # All the edge's CPU, not only the decoding: reading, dispatching and answering
            # an event hold the same loop.
            cpu = time.process_time()
            per_event = (cpu - self.sampled_cpu) / self.sampled_events
            self.cpu_s_per_event += SMOOTHING * (per_event - self.cpu_s_per_event)
            self.sampled_events, self.sampled_cpu = 0, cpu
