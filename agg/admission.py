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
  events go to the workers as themselves.
"""

from __future__ import annotations

from typing import Optional

from .dispatch import Overloaded, Reservation, WorkerPool

# What a request's size says of its events, before any was measured.
FIRST_BYTES_PER_EVENT = 200.0
SMOOTHING = 0.1


class Refused(Exception):
    """Not admitted now: too much is held already."""


class Ticket:
    """What one admitted request holds; ``release`` gives it all back."""

    def __init__(self, admission: "Admission", size: int, reservation: Optional[Reservation]) -> None:
        self.admission = admission
        self.size = size
        self.reservation = reservation

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
        if self.reservation is not None:
            self.reservation.release()
            self.reservation = None

    def release(self) -> None:
        self.read(0)
        self.admission.publishes -= 1
        self.admission.bytes -= self.size
        self.size = 0


class Admission:
    def __init__(self, edge: str, pool: WorkerPool, max_requests: int, max_bytes: int) -> None:
        self.edge = edge
        self.pool = pool
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.publishes = 0
        self.bytes = 0
        self.bytes_per_event = FIRST_BYTES_PER_EVENT

    def refusal(self, size: int) -> Optional[str]:
        """Why a request of ``size`` bytes would be refused now, or None; takes nothing."""
        return self._held_refusal(size) or self.pool.refusal(self.events_in(size), size)

    def admit(self, size: Optional[int]) -> Ticket:
        """Hold room for a request of ``size`` bytes (None: not known yet), or Refused."""
        size = size or 0
        reason = self._held_refusal(size)
        if reason is not None:
            raise Refused(reason)
        try:
            reservation = self.pool.reserve(self.events_in(size), size)
        except Overloaded as exc:
            raise Refused(str(exc)) from None
        self.publishes += 1
        self.bytes += size
        return Ticket(self, size, reservation)

    def _held_refusal(self, size: int) -> Optional[str]:
        """Why the edge's own bounds (requests, bytes held) refuse ``size`` more bytes, or None."""
        if self.publishes >= self.max_requests:
            return f"the {self.edge} holds {self.publishes} requests already"
        if self.bytes and self.bytes + size > self.max_bytes:
            return f"the {self.edge} holds {self.bytes} bytes of requests already"
        return None

    def events_in(self, size: int) -> int:
        """About how many events a body of ``size`` bytes holds."""
        return max(1, int(size / self.bytes_per_event))

    def learn(self, size: int, events: int) -> None:
        if events and size:
            self.bytes_per_event += SMOOTHING * (size / events - self.bytes_per_event)
