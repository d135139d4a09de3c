"""What an edge process (front or ingest) reports to the stats process.

- What it rejected: an edge refuses invalid input before it reaches a
  worker, so no shard counts it. Counts by reason (``invalid_json``,
  ``invalid_event``, ``too_large``, ...).
- What it took and refused (``count``): the ingest's batches and events
  acknowledged, and batches refused for overload or unavailability.
- Its queue depth: the events it has sent to each worker and not yet seen
  acknowledged, so that ``agg-stats --watch`` over ZeroMQ shows the sum of
  every edge's, as ``GET /stats`` does.

Both go as one absolute snapshot (``EDGE``, topic ``ctr.edge.PID``) whenever either
changes (looked at every 0.1 s), and at least every ``stats.heartbeat_s``.
Its loop also sends the process's heartbeat to the supervisor
(``lifecycle.Heartbeat``): it turns only while the event loop does.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Callable, Dict, List

import zmq
import zmq.asyncio

from . import lifecycle, protocol
from .config import Config
from .protocol import EdgeSnapshot


class EdgeReporter:
    def __init__(self, ctx: zmq.asyncio.Context, config: Config, role: str,
                 inflight: Callable[[], List[int]]) -> None:
        self.role = role
        self.interval = config.stats.heartbeat_s
        self.rejected: Dict[str, int] = {}
        self.counted: Dict[str, int] = {}
        self.inflight = inflight
        self.sent_inflight: List[int] = []
        self.changed = False
        self.pub = ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 500)
        self.pub.connect(config.endpoint("stats_in"))
        # This loop turns only if the event loop does: it also beats for the process.
        self.heartbeat = lifecycle.Heartbeat(config)
        self.topic = protocol.TOPIC_EDGE + str(os.getpid()).encode()
        self.task = asyncio.get_running_loop().create_task(self._loop())

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        self.changed = True

    def count(self, name: str, n: int = 1) -> None:
        self.counted[name] = self.counted.get(name, 0) + n
        self.changed = True

    def send(self) -> None:
        self.sent_inflight = self.inflight()
        snapshot = EdgeSnapshot(os.getpid(), self.role, self.rejected, self.sent_inflight, time.time(),
                                 self.counted)
        self.pub.send_multipart([self.topic] + protocol.encode(protocol.EDGE, snapshot))
        self.changed = False

    async def _loop(self) -> None:
        last = 0.0
        while True:
            await asyncio.sleep(min(self.interval, 0.1))
            self.heartbeat.beat()
            now = time.monotonic()
            if self.changed or self.inflight() != self.sent_inflight or now - last >= self.interval:
                self.send()
                last = now

    def close(self) -> None:
        self.task.cancel()
        self.send()
        self.pub.close()
        self.heartbeat.close()
