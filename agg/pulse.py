"""A worker's pulse: BUSY told to its peers from a thread of its own, so that
a worker at work is never taken for a stalled one, whatever holds its loop.

Why a thread: the loop can be held where it cannot speak: in one long write
of a COMMIT on a loaded disk, in a flush, in encoding a page of 10,000
events, or simply off the CPU on a busy machine. SQLite's progress handler
reached only the first kind. A thread runs whenever the loop's thread waits
on the disk or lets the GIL go, which it does every few milliseconds.

ZeroMQ sockets must not be used by two threads at once, so the worker's
ROUTER is shared under ``lock``: the loop holds it for each receive and send
while it works, and lets it go, with ``working_since`` at 0, before it polls.
The pulse touches the socket only under the lock and only while the loop
works, so the two never meet on it. A worker that is truly stopped (SIGSTOP)
stops its pulse too, and one whose loop has worked for ``limit_s`` without
an end is not covered any longer: the edges then take it for stalled.
"""

from __future__ import annotations

import threading
import time
from typing import Dict

import zmq

from . import protocol

PEER_FORGET_S = 300.0  # a peer silent this long is told no more BUSY


class Pulse(threading.Thread):
    """Tells recent peers BUSY every ``every`` seconds while the loop works."""

    def __init__(self, router: zmq.Socket, every: float, limit_s: float) -> None:
        super().__init__(name="pulse", daemon=True)
        self.router = router
        self.every = every
        self.limit_s = limit_s
        self.lock = threading.Lock()
        self.working_since = 0.0  # monotonic time the loop began its current work; 0: idle
        self.peers: Dict[bytes, float] = {}  # routing id -> when last heard (written by the loop)
        self.stopping = threading.Event()
        self.busy = protocol.encode(protocol.BUSY, [None])

    def run(self) -> None:
        while not self.stopping.wait(self.every):
            with self.lock:
                since = self.working_since
                now = time.monotonic()
                if since and self.every <= now - since <= self.limit_s:
                    self.tell(now)

    def tell(self, now: float) -> None:
        """BUSY to every peer heard from lately (the lock held)."""
        for rid, seen in list(self.peers.items()):
            if now - seen > PEER_FORGET_S:
                self.peers.pop(rid, None)  # gone quiet (an edge restarted with a new id)
                continue
            try:
                self.router.send_multipart([rid, *self.busy], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # a full or gone peer: it hears from the worker when it can

    def work(self) -> None:
        """The loop begins work (it polled and something came)."""
        with self.lock:
            self.working_since = time.monotonic()

    def rest(self) -> None:
        """The loop goes back to its poll: the pulse keeps off the socket."""
        with self.lock:
            self.working_since = 0.0

    def stop(self) -> None:
        self.stopping.set()
        if self.is_alive():
            self.join()

