"""GET /events: a page of events after a cursor, or the whole listing streamed."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncIterator, Dict, List, Optional

import falcon
import falcon.asgi
import orjson

from .. import protocol
from ..dispatch import PeerError, Unavailable
from ..protocol import StoredRow
from .auth import READ
from .backends import Backends, unavailable
from .cursor import decode_cursor, encode_cursor

log = logging.getLogger("agg.front")

# Rows per internal page while streaming a full GET /events.
STREAM_PAGE = 1000
# Rows encoded per turn of the loop in a page of GET /events?limit=N.
ENCODE_SLICE = 1000
FIRST_PAUSE = 0.05  # before a listing asks a failed worker again; doubles up to 1 s


def event_json(row: StoredRow) -> Dict[str, Any]:
    return {"topic": row.topic, "event_id": row.event_id, "timestamp": row.timestamp,
            "source": row.source, "payload": orjson.Fragment(row.payload), "received_at": row.received_at}


def events_json(rows: List[StoredRow]) -> bytes:
    """``rows`` as the inside of a JSON array: objects joined by commas."""
    return orjson.dumps([event_json(r) for r in rows])[1:-1]


async def _each(pieces: List[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


class Listing:
    scope = READ

    def __init__(self, backends: Backends) -> None:
        self.backends = backends
        self.max_page = backends.config.limits.max_events_page
        self.ack_timeout = backends.config.limits.ack_timeout_s

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        topic = req.get_param("topic") or None
        limit = req.get_param_as_int("limit", min_value=1, max_value=self.max_page)
        cursor = req.get_param("cursor")
        position: Dict[int, int] = {}
        if cursor:
            try:
                position = decode_cursor(cursor)
            except ValueError as exc:
                raise falcon.HTTPBadRequest(title="Invalid parameter",
                                            description=f"cursor: {exc}") from None
        if limit is None:
            # The whole listing, streamed page by page: never all in memory at once.
            await self.page(topic, position, 1)  # a 503 now, before the 200 head is sent
            resp.content_type = falcon.MEDIA_JSON
            resp.stream = self._stream(topic, position)
            return
        rows, after = await self.page(topic, position, limit)
        # Encoded a slice per turn of the loop, as the rows were fetched (agg.dispatch.merge),
        # and sent as those pieces: joined, a page of 10 MB is copied twice into fresh memory,
        # 20-80 ms of one turn.
        pieces = [b'{"count":%d,"events":[' % len(rows)]
        for start in range(0, len(rows), ENCODE_SLICE):
            if start:
                await asyncio.sleep(0)
                pieces.append(b",")
            pieces.append(events_json(rows[start:start + ENCODE_SLICE]))
        pieces.append(b'],"next_cursor":%s,"has_more":%s}' % (
            orjson.dumps(encode_cursor(after)), b"true" if len(rows) == limit else b"false"))
        resp.content_type = falcon.MEDIA_JSON
        resp.content_length = sum(map(len, pieces))
        resp.stream = _each(pieces)

    async def page(self, topic: Optional[str], position: Dict[int, int], limit: int) -> Any:
        try:
            return await self.backends.pool.page(topic, position, limit)
        except (Unavailable, PeerError) as exc:
            raise unavailable(f"cannot read events: {exc}", self.backends.retry_after) from None

    async def _stream(self, topic: Optional[str], position: Dict[int, int]) -> AsyncIterator[bytes]:
        """The listing, page by page, of the events received before it began:
        under a steady load it would otherwise never end."""
        until = protocol.utc_stamp()
        count = 0
        yield b'{"events":['
        while True:
            rows = await self._page_or_none(topic, position)
            if rows is None:
                return  # the JSON stays unclosed: a cut listing cannot pass for a whole one
            position = dict(position)
            fresh = 0
            for row in rows:
                if row.received_at > until:
                    break
                position[row.partition] = row.seq
                fresh += 1
            if fresh:
                yield (b"," if count else b"") + events_json(rows[:fresh])
                count += fresh
            if fresh < STREAM_PAGE:
                break
        yield b'],"count":' + str(count).encode() + b"}"

    async def _page_or_none(self, topic: Optional[str], position: Dict[int, int]) -> Optional[List[StoredRow]]:
        """The next page; if a worker fails, the same page again until it is back
        (a restart takes about a second), for up to ``limits.ack_timeout_s``."""
        deadline = time.monotonic() + self.ack_timeout
        pause = FIRST_PAUSE
        while True:
            try:
                rows, _after = await self.backends.pool.page(topic, position, STREAM_PAGE)
                return rows
            except (Unavailable, PeerError) as exc:
                if time.monotonic() + pause > deadline:
                    log.warning("GET /events cut short, a worker is still unavailable: %s", exc)
                    return None
                if pause == FIRST_PAUSE:
                    log.warning("GET /events waits for a worker: %s", exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)
