"""POST /publish: one event or ``{"events": [...]}``, answered after commit."""

from __future__ import annotations

import time
from typing import List

import falcon
import falcon.asgi
import orjson

from .. import protocol
from ..dispatch import Overloaded, Unavailable
from ..events import FastJsonDecoder, InvalidEvents, Limits, events_of_body, validate_batch
from ..protocol import Event
from .auth import PUBLISH
from .backends import Backends, InvalidRequest, json_response, unavailable

HTTPContentTooLarge = getattr(falcon, "HTTPContentTooLarge", None) or falcon.HTTPPayloadTooLarge


class Publish:
    scope = PUBLISH

    def __init__(self, backends: Backends) -> None:
        self.backends = backends
        config = backends.config
        self.limits = Limits.from_config(config)
        self.fast = FastJsonDecoder(self.limits)
        self.max_body = config.limits.max_body_bytes
        self.retry_after = config.limits.retry_after_s
        # One histogram child per outcome, looked up once, not at every request.
        histogram = backends.metrics.publish_seconds
        self.observe = {outcome: histogram.labels(outcome).observe
                        for outcome in ("ok", "refused", "unavailable", "error")}

    async def read_body(self, req: falcon.asgi.Request) -> bytes:
        if req.content_length is not None and req.content_length > self.max_body:
            self.backends.reject("too_large")
            raise HTTPContentTooLarge(title="Body too large", description=(
                f"the body is {req.content_length} bytes; the limit is {self.max_body}"))
        chunks: List[bytes] = []
        size = 0
        async for chunk in req.stream:
            size += len(chunk)
            if size > self.max_body:
                self.backends.reject("too_large")
                raise HTTPContentTooLarge(title="Body too large",
                                          description=f"the body exceeds the limit of {self.max_body} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def validate(self, raw: bytes) -> List[Event]:
        """The slow path: parse, then name every problem of an invalid request."""
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            self.backends.reject("invalid_json")
            raise InvalidRequest(f"the body is not valid JSON: {exc}") from None
        try:
            items, single = events_of_body(body)
            return validate_batch(items, self.limits, single)
        except InvalidEvents as exc:
            self.backends.reject("invalid_event")
            raise InvalidRequest(f"{exc}; nothing was stored",
                                 [e.to_json() for e in exc.errors]) from None

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        start = time.perf_counter()
        outcome = "error"
        try:
            await self.publish(req, resp)
            outcome = "ok"
        except falcon.HTTPServiceUnavailable:
            outcome = "unavailable"
            raise
        except falcon.HTTPError:
            outcome = "refused"
            raise
        finally:
            self.observe[outcome](time.perf_counter() - start)

    async def publish(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        raw = await self.read_body(req)
        events = self.fast.decode(raw)
        if events is None:
            events = self.validate(raw)
        try:
            statuses = await self.backends.pool.store(events)
        except (Overloaded, Unavailable) as exc:
            raise unavailable(str(exc), self.retry_after) from None
        stored = statuses.count(protocol.STORED)
        json_response(resp, {"status": "accepted", "received": len(events), "queued": len(events),
                             "stored": stored, "duplicates": len(events) - stored})
