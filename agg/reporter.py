"""Counts what an edge process (front or ingest) rejected, and reports it.

An edge refuses invalid input before it reaches a worker, so no shard counts
it; this reporter keeps those counts by reason (``invalid_json``,
``invalid_event``, ``too_large``, ...) and sends them as an absolute snapshot
(topic ``ctr.front.PID``) to the stats process whenever they change, and at
least every ``stats.heartbeat_s``.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Dict

import zmq
import zmq.asyncio

from . import protocol


class RejectReporter:
    def __init__(self, ctx: zmq.asyncio.Context, config: Any, role: str) -> None:
        self.role = role
        self.heartbeat = config.stats_heartbeat_s
        self.rejected: Dict[str, int] = {}
        self.changed = False
        self.pub = ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 500)
        self.pub.connect(config.endpoint("stats_in"))
        self.task = asyncio.get_running_loop().create_task(self._loop())

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        self.changed = True

    def send(self) -> None:
        topic = protocol.TOPIC_FRONT + str(os.getpid()).encode()
        self.pub.send_multipart([topic] + protocol.encode(protocol.FRONT, {
            "pid": os.getpid(), "role": self.role, "rejected": self.rejected, "time": time.time()}))
        self.changed = False

    async def _loop(self) -> None:
        last = 0.0
        while True:
            await asyncio.sleep(min(self.heartbeat, 0.1))
            now = time.monotonic()
            if self.changed or now - last >= self.heartbeat:
                self.send()
                last = now

    def close(self) -> None:
        self.task.cancel()
        self.send()
        self.pub.close()
