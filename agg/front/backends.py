"""What the front's resources share: its sockets (``Backends``, a Falcon
middleware for the lifespan only: opened at ASGI startup, closed at shutdown)
and the shapes of its answers. Errors are Falcon's typed HTTP errors, rendered
as JSON ``{"title", "description"[, "errors"]}``."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import falcon
import falcon.asgi
import orjson
import zmq
import zmq.asyncio

from .. import metrics, protocol
from ..config import Config
from ..dispatch import Peer, PeerError, Unavailable, WorkerPool
from ..edgereport import EdgeReporter
from ..admission import Admission
from ..looplag import LoopLag


class InvalidRequest(falcon.HTTPUnprocessableEntity):
    """422 whose JSON body also lists every problem: ``errors: [{index, field, message}]``."""

    def __init__(self, description: str, errors: Optional[List[Dict[str, Any]]] = None) -> None:
        super().__init__(title="Invalid request", description=description)
        self.errors = errors or []

    def to_dict(self, obj_type: Any = dict) -> Any:
        body: Any = super().to_dict(obj_type)
        if self.errors:
            body["errors"] = self.errors
        return body


# What every 503 adds to its reason.
NOTHING_ACKNOWLEDGED = "; nothing of this request was acknowledged, resend it (duplicates are dropped)"


def unavailable(reason: str, retry_after: int, close: bool = False) -> falcon.HTTPServiceUnavailable:
    """503 with Retry-After; ``close``: and the connection is closed after it."""
    return falcon.HTTPServiceUnavailable(
        title="Service unavailable", description=reason + NOTHING_ACKNOWLEDGED, retry_after=retry_after,
        headers={"Connection": "close"} if close else None)


def too_large(length: int, limit: int) -> str:
    """What a 413 for a declared ``Content-Length`` says."""
    return f"the body is {length} bytes; the limit is {limit}"


def json_response(resp: falcon.asgi.Response, body: Any) -> None:
    resp.data = orjson.dumps(body)
    resp.content_type = falcon.MEDIA_JSON


class Backends:
    """The front's sockets: opened at ASGI startup, closed at shutdown."""

    def __init__(self, config: Config, connections: Callable[[], int]) -> None:
        self.config = config
        self.connections = connections
        self.ctx: Optional[zmq.asyncio.Context] = None
        self.metrics = metrics.FrontMetrics(config)
        self.retry_after = config.limits.retry_after_s

    async def process_startup(self, scope: Any, event: Any) -> None:
        self.ctx = zmq.asyncio.Context()
        self.pool = WorkerPool(self.ctx, self.config)
        http = self.config.http
        self.lag = LoopLag("front", self.config.limits.max_lag_s)
        self.admission = Admission("front", self.pool, http.max_publishes, self.config.limits.max_reading_bytes,
                                   self.lag)
        self.max_connections = http.max_connections
        self.pool.start()
        self.stats = Peer(self.ctx, self.config.endpoint("stats"), "stats")
        self.stats.start()
        self.reporter = EdgeReporter(self.ctx, self.config, "front", self.pool.inflight)

    async def process_shutdown(self, scope: Any, event: Any) -> None:
        self.lag.stop()
        self.reporter.close()
        self.pool.close()
        self.stats.close()
        assert self.ctx is not None
        self.ctx.term()

    def over_connections(self) -> Optional[str]:
        """Why a request is refused (503, and its connection closed) for the
        number of connections open, or None."""
        if self.connections() > self.max_connections:
            return f"the front has over {self.max_connections} connections"
        return None

    def reject(self, reason: str) -> None:
        self.reporter.reject(reason)

    async def ask_stats(self) -> Dict[str, Any]:
        try:
            return await self.stats.request(protocol.STATS, {}, min(self.config.limits.ack_timeout_s, 2.0),
                                            Dict[str, Any])
        except (Unavailable, PeerError) as exc:
            raise unavailable(f"the stats process is not answering ({exc})", self.retry_after) from None
