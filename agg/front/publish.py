"""POST /publish: one event or ``{"events": [...]}``, answered after commit.

Admission comes first, before a byte of the body is read (``admission``);
then the body, which must be whole within ``http.body_timeout_s`` (408 and
the connection closed, else); then one decode and validation; then the
workers. Every refusal for want of room is a 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import time
from typing import List, Optional

import falcon
import falcon.asgi
import orjson

from .. import protocol
from ..dispatch import Overloaded, Unavailable
from ..events import FastJsonDecoder, InvalidEvents, Limits, events_of_body, validate_batch
from ..protocol import Event
from ..admission import Refused, Ticket
from .auth import PUBLISH
from .backends import Backends, InvalidRequest, json_response, too_large, unavailable

HTTPContentTooLarge = getattr(falcon, "HTTPContentTooLarge", None) or falcon.HTTPPayloadTooLarge


class BodyDeadline:
    """Cancels the reading task when the body has not come in time: a timer,
    not a task and a ``wait_for`` per request."""

    def __init__(self, seconds: float) -> None:
        self.task = asyncio.current_task()
        self.expired = False
        self.timer = asyncio.get_running_loop().call_later(seconds, self._expire)

    def _expire(self) -> None:
        self.expired = True
        if self.task is not None:
            self.task.cancel()

    def done(self) -> None:
        self.timer.cancel()


class Publish:
    scope = PUBLISH

    def __init__(self, backends: Backends) -> None:
        self.backends = backends
        config = backends.config
        self.limits = Limits.from_config(config)
        self.fast = FastJsonDecoder(self.limits)
        self.max_body = config.limits.max_body_bytes
        self.body_timeout = config.http.body_timeout_s
        self.retry_after = config.limits.retry_after_s
        # One histogram child per outcome, looked up once, not at every request.
        histogram = backends.metrics.publish_seconds
        self.observe = {outcome: histogram.labels(outcome).observe
                        for outcome in ("ok", "refused", "unavailable", "error")}

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
        length: Optional[int] = req.content_length
        if length is not None and length > self.max_body:
            self.backends.reject("too_large")
            raise HTTPContentTooLarge(title="Body too large", description=too_large(length, self.max_body))
        backends = self.backends
        crowded = backends.over_connections()
        if crowded is not None:
            raise unavailable(crowded, self.retry_after, close=True)
        try:
            ticket = backends.admission.admit(length)
        except Refused as exc:
            raise unavailable(str(exc), self.retry_after) from None
        try:
            raw = await self.read_body(req, ticket)
            events = self.fast.decode(raw)
            if events is None:
                events = self.validate(raw)
            ticket.read(len(events))
            try:
                statuses = await self.backends.pool.store(events, len(raw))
            except (Overloaded, Unavailable) as exc:
                raise unavailable(str(exc), self.retry_after) from None
        finally:
            ticket.release()
        stored = statuses.count(protocol.STORED)
        json_response(resp, {"status": "accepted", "received": len(events), "queued": len(events),
                             "stored": stored, "duplicates": len(events) - stored})

    async def read_body(self, req: falcon.asgi.Request, ticket: Ticket) -> bytes:
        """The whole body, within ``http.body_timeout_s`` and the size limits."""
        deadline = BodyDeadline(self.body_timeout)
        chunks: List[bytes] = []
        size = 0
        try:
            async for chunk in req.stream:
                size += len(chunk)
                if size > self.max_body:
                    self.backends.reject("too_large")
                    raise HTTPContentTooLarge(title="Body too large", description=(
                        f"the body exceeds the limit of {self.max_body} bytes"), headers={"Connection": "close"})
                if size > ticket.size:
                    try:
                        ticket.grow(size)
                    except Refused as exc:
                        raise unavailable(str(exc), self.retry_after, close=True) from None
                chunks.append(chunk)
        except asyncio.CancelledError:
            if not deadline.expired:
                raise
            self.backends.reject("body_timeout")
            raise falcon.HTTPError(falcon.HTTP_408, title="Request timeout", description=(
                f"the body did not arrive within {self.body_timeout:g} s ({size} bytes came); "
                f"nothing was stored"), headers={"Connection": "close"}) from None
        finally:
            deadline.done()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

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
