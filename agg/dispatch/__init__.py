"""Talking to the workers (and the stats process) from an asyncio edge (the
front, the ingest): ``peer`` (one DEALER to one ROUTER), ``window`` (how much
a worker is given), ``pool`` (routing a publish by partition).

Back-pressure, so that memory stays bounded and overload is said, not hidden:
- a worker given as much as it commits in ``limits.queue_s`` (or
  ``limits.max_inflight_events``, ``limits.max_inflight_bytes``) gets no more:
  ``Overloaded`` (503 / ERR overload), decided before a body is read where
  the edge can (``WorkerPool.reserve``);
- a worker that is not connected (``IMMEDIATE``: nothing is queued for a
  peer that is not there): ``Unavailable`` at once;
- a worker silent for ``limits.stall_s`` while it owes answers: ``Unavailable``
  for what it holds, and at once for what comes next, until it speaks again;
  a worker at work on a long request says so (BUSY);
- a worker that does not answer within ``limits.ack_timeout_s``:
  ``Unavailable``. Whatever it did commit is a duplicate when resent, and a
  STORE carries that deadline, so that a worker does not begin one whose
  sender has given up.
"""

from .peer import Peer, PeerError, Unavailable
from .pool import Overloaded, Reservation, WorkerPool
from .window import Window

__all__ = ["Overloaded", "Peer", "PeerError", "Reservation", "Unavailable", "WorkerPool", "Window"]
