"""HTTP front: the Falcon ASGI app that keeps the seed's API, served by uvicorn.

Binds:     TCP ``http.host``:``http.port`` (port 0: any free port, announced in READY).
Connects:  a DEALER to every worker (``agg.dispatch.WorkerPool``), a DEALER to
           the stats process, and a PUB to ``endpoints.stats_in`` for its own
           counters (requests rejected, by reason).
Owns:      nothing durable; every answer to POST /publish comes after commit.
Stops:     on SIGTERM, after in-flight requests are answered (uvicorn's drain).

Routes: POST /publish, GET /events, GET /stats, GET /health, GET /metrics,
GET /openapi.json, GET /docs (Swagger UI, from a packaged bundle). Errors are
Falcon's typed HTTP errors rendered as JSON ``{"title", "description"[, "errors"]}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import signal
import socket
import time
from typing import Any, AsyncIterator, Dict, Iterator, List, Optional, Sequence

import falcon
import falcon.asgi
import orjson
import uvicorn
import zmq
import zmq.asyncio
from swagger_ui_bundle import swagger_ui_path

from . import config as configmod
from . import lifecycle, metrics, openapi, protocol
from .dispatch import (Overloaded, Peer, PeerError, Unavailable, WorkerPool, decode_cursor,
                       encode_cursor)
from .edgereport import EdgeReporter
from .events import (FastJsonDecoder, InvalidEvents, Limits, WireEvent, events_of_body,
                     validate_batch)

log = logging.getLogger("agg.front")

HTTPContentTooLarge = getattr(falcon, "HTTPContentTooLarge", None) or falcon.HTTPPayloadTooLarge

# Rows per internal page while streaming a full GET /events.
STREAM_PAGE = 1000
FIRST_PAUSE = 0.05  # before a listing asks a failed worker again; doubles up to 1 s


class InvalidRequest(falcon.HTTPUnprocessableEntity):
    """422 whose JSON body also lists every problem: ``errors: [{index, field, message}]``."""

    def __init__(self, description: str, errors: Optional[List[dict]] = None) -> None:
        super().__init__(title="Invalid request", description=description)
        self.errors = errors or []

    def to_dict(self, obj_type: Any = dict) -> Any:
        body: Any = super().to_dict(obj_type)
        if self.errors:
            body["errors"] = self.errors
        return body


class BearerToken:
    """Checks ``Authorization: Bearer TOKEN`` in constant time; an empty token
    configured means the route is open."""

    def __init__(self, token: str, what: str) -> None:
        self.token = token.encode()
        self.what = what

    def check(self, req: falcon.asgi.Request, backends: "Backends") -> None:
        if not self.token:
            return
        given = (req.get_header("Authorization") or "").encode()
        scheme, _, value = given.partition(b" ")
        # compare_digest takes the same time whatever matches, so the token cannot be guessed byte by byte.
        if not (scheme.lower() == b"bearer" and hmac.compare_digest(value.strip(), self.token)):
            backends.reject("unauthorized")
            raise falcon.HTTPUnauthorized(
                title="Unauthorized", challenges=['Bearer realm="agg"'],
                description=f"{self.what} needs 'Authorization: Bearer <token>' with the right token")


def unavailable(reason: str, retry_after: int) -> falcon.HTTPServiceUnavailable:
    return falcon.HTTPServiceUnavailable(
        title="Service unavailable", description=reason + "; nothing of this request was "
        "acknowledged, resend it (duplicates are dropped)", retry_after=retry_after)


def json_response(resp: falcon.asgi.Response, body: Any) -> None:
    resp.data = orjson.dumps(body)
    resp.content_type = falcon.MEDIA_JSON


def event_json(row: List[Any]) -> Dict[str, Any]:
    _p, _seq, topic, event_id, timestamp, source, payload, received_at = row
    return {"topic": topic, "event_id": event_id, "timestamp": timestamp, "source": source,
            "payload": orjson.Fragment(payload), "received_at": received_at}


class Backends:
    """The front's sockets: opened at ASGI startup, closed at shutdown."""

    def __init__(self, config: configmod.Config) -> None:
        self.config = config
        self.ctx: Optional[zmq.asyncio.Context] = None
        self.metrics = metrics.FrontMetrics()

    async def process_startup(self, scope: Any, event: Any) -> None:
        self.ctx = zmq.asyncio.Context()
        self.pool = WorkerPool(self.ctx, self.config)
        self.pool.start()
        self.stats = Peer(self.ctx, self.config.endpoint("stats"), "stats")
        self.stats.start()
        self.reporter = EdgeReporter(self.ctx, self.config, "front", self.pool.inflight)

    async def process_shutdown(self, scope: Any, event: Any) -> None:
        self.reporter.close()
        self.pool.close()
        self.stats.close()
        assert self.ctx is not None
        self.ctx.term()

    def reject(self, reason: str) -> None:
        self.reporter.reject(reason)

    async def ask_stats(self) -> Dict[str, Any]:
        try:
            return await self.stats.request(protocol.STATS, {}, min(self.config.limits_ack_timeout_s, 2.0))
        except (Unavailable, PeerError) as exc:
            raise unavailable(f"the stats process is not answering ({exc})",
                              self.config.limits_retry_after_s) from None


class Publish:
    def __init__(self, backends: Backends) -> None:
        self.backends = backends
        config = backends.config
        self.limits = Limits.from_config(config)
        self.fast = FastJsonDecoder(self.limits)
        self.max_body = config.limits_max_body_bytes
        self.retry_after = config.limits_retry_after_s
        self.auth = BearerToken(config.http_publish_token, "POST /publish")
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

    def validate(self, raw: bytes) -> List[WireEvent]:
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
        self.auth.check(req, self.backends)
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


class Events:
    def __init__(self, backends: Backends) -> None:
        self.backends = backends
        self.max_page = backends.config.limits_max_events_page
        self.auth = BearerToken(backends.config.http_read_token, "GET /events")

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        self.auth.check(req, self.backends)
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
        pool = self.backends.pool
        if limit is None:
            # The whole listing, streamed page by page: never all in memory at once.
            await self._first_check(topic, position)
            resp.content_type = falcon.MEDIA_JSON
            resp.stream = self._stream(topic, position)
            return
        try:
            rows, after = await pool.page(topic, position, limit)
        except (Unavailable, PeerError) as exc:
            raise unavailable(f"cannot read events: {exc}",
                              self.backends.config.limits_retry_after_s) from None
        json_response(resp, {"count": len(rows), "events": [event_json(r) for r in rows],
                             "next_cursor": encode_cursor(after), "has_more": len(rows) == limit})

    async def _first_check(self, topic: Optional[str], position: Dict[int, int]) -> None:
        """Fail with 503 before the 200 header is sent if a worker cannot answer."""
        try:
            await self.backends.pool.page(topic, position, 1)
        except (Unavailable, PeerError) as exc:
            raise unavailable(f"cannot read events: {exc}",
                              self.backends.config.limits_retry_after_s) from None

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
                if row[7] > until:
                    break
                position[row[0]] = row[1]
                fresh += 1
            if fresh:
                chunk = b",".join(orjson.dumps(event_json(r)) for r in rows[:fresh])
                yield (b"," if count else b"") + chunk
                count += fresh
            if fresh < STREAM_PAGE:
                break
        yield b'],"count":' + str(count).encode() + b"}"

    async def _page_or_none(self, topic: Optional[str], position: Dict[int, int]) -> Optional[List[Any]]:
        """The next page; if a worker fails, the same page again until it is back
        (a restart takes about a second), for up to ``limits.ack_timeout_s``."""
        deadline = time.monotonic() + self.backends.config.limits_ack_timeout_s
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


class Stats:
    def __init__(self, backends: Backends) -> None:
        self.backends = backends
        self.auth = BearerToken(backends.config.http_read_token, "GET /stats")

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        self.auth.check(req, self.backends)
        json_response(resp, await self.backends.ask_stats())


class Metrics:
    def __init__(self, backends: Backends) -> None:
        self.backends = backends
        self.auth = BearerToken(backends.config.http_read_token, "GET /metrics")

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        self.auth.check(req, self.backends)
        summary = await self.backends.ask_stats()
        resp.data = self.backends.metrics.render(summary, self.backends.pool.inflight())
        resp.content_type = metrics.CONTENT_TYPE


class OpenApi:
    def __init__(self, config: configmod.Config) -> None:
        self.body = orjson.dumps(openapi.spec(config))

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.data = self.body
        resp.content_type = falcon.MEDIA_JSON


class Docs:
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.text = openapi.DOCS_PAGE
        resp.content_type = falcon.MEDIA_HTML


class Health:
    def __init__(self, backends: Backends) -> None:
        self.backends = backends

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        try:
            summary = await self.backends.ask_stats()
        except falcon.HTTPServiceUnavailable:
            resp.status = falcon.HTTP_503
            json_response(resp, {"status": "unhealthy", "missing": ["stats"]})
            return
        missing = [f"worker {i}" for i, w in summary["workers"].items() if not w["alive"]]
        storage = {f"worker {i}": w["storage_error"] for i, w in summary["workers"].items()
                   if w.get("storage_error")}
        if missing or storage:
            resp.status = falcon.HTTP_503
            json_response(resp, {"status": "unhealthy", "missing": missing,
                                 "storage_errors": storage, "workers": summary["workers"]})
        else:
            json_response(resp, {"status": "healthy", "workers": summary["workers"]})


def create_app(config: configmod.Config) -> falcon.asgi.App:
    backends = Backends(config)
    app = falcon.asgi.App(middleware=[backends])
    app.add_route("/publish", Publish(backends))
    app.add_route("/events", Events(backends))
    app.add_route("/stats", Stats(backends))
    app.add_route("/health", Health(backends))
    app.add_route("/metrics", Metrics(backends))
    app.add_route("/openapi.json", OpenApi(config))
    app.add_route("/docs", Docs())
    # Swagger UI's scripts from the installed swagger-ui-bundle package: no CDN at run time.
    app.add_static_route("/docs/static", str(swagger_ui_path))
    return app


class Server(uvicorn.Server):
    """uvicorn's server, announcing READY once listening, and stopping on our signals."""

    def __init__(self, config: uvicorn.Config, agg_config: configmod.Config, endpoint: str) -> None:
        super().__init__(config)
        self.agg_config = agg_config
        self.endpoint = endpoint

    async def startup(self, sockets: Optional[List[socket.socket]] = None) -> None:
        await super().startup(sockets=sockets)
        if not self.should_exit:
            log.info("listening on %s", self.endpoint)
            lifecycle.announce_ready(self.agg_config, "front", 0, self.endpoint)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        def handle(signum: int, frame: Any) -> None:
            if self.should_exit:
                self.force_exit = True
            self.should_exit = True

        previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, handle)}
        previous[signal.SIGINT] = signal.signal(
            signal.SIGINT, signal.SIG_IGN if lifecycle.supervised() else handle)
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def install_signal_handlers(self) -> None:  # uvicorn < 0.29
        pass


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run(config: configmod.Config) -> int:
    lifecycle.die_with_supervisor()
    try:
        sock = bind_socket(config.http_host, config.http_port)
    except OSError as exc:
        log.error("cannot bind %s:%s: %s", config.http_host, config.http_port, exc.strerror)
        return 1
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    endpoint = f"http://{shown}:{port}"
    uv_config = uvicorn.Config(
        create_app(config), lifespan="on", access_log=False, log_config=None,
        log_level=config.log_level, timeout_graceful_shutdown=config.supervisor_grace_s,
        loop="uvloop" if _has("uvloop") else "asyncio",
        # Nothing here reads the client's address, so no per-request X-Forwarded-For pass.
        proxy_headers=False,
        http="httptools" if _has("httptools") else "h11")
    server = Server(uv_config, config, endpoint)
    server.run(sockets=[sock])
    log.info("stopped")
    return 0


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def main(argv: Optional[Sequence[str]] = None) -> int:
    _args, config = configmod.from_command_line("agg-front", "run the agg HTTP front", argv)
    lifecycle.setup_logging("front", config.log_level)
    return run(config)


if __name__ == "__main__":
    raise SystemExit(main())
