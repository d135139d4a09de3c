"""The front's Falcon ASGI app: ``create_app(config)`` and its small routes.

POST /publish and GET /events have modules of their own (``publish``,
``listing``); the routes here answer from the stats process, or with
constants (the OpenAPI description and Swagger UI).
"""

from __future__ import annotations

import os
from typing import Any, Callable, List, Optional

import falcon
import falcon.asgi
import orjson
from swagger_ui_bundle import swagger_ui_path

from .. import metrics, openapi
from ..config import Config
from .auth import READ, BearerAuth
from .backends import Backends, json_response
from .listing import Listing
from .publish import Publish


class Stats:
    scope = READ

    def __init__(self, backends: Backends) -> None:
        self.backends = backends

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        json_response(resp, await self.backends.ask_stats())


class Metrics:
    scope = READ

    def __init__(self, backends: Backends) -> None:
        self.backends = backends

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        summary = await self.backends.ask_stats()
        resp.data = self.backends.metrics.render(summary, self.backends.pool.inflight())
        resp.content_type = metrics.CONTENT_TYPE


class OpenApi:
    def __init__(self, config: Config) -> None:
        self.body = orjson.dumps(openapi.spec(config))

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.data = self.body
        resp.content_type = falcon.MEDIA_JSON


class Docs:
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.text = openapi.DOCS_PAGE
        resp.content_type = falcon.MEDIA_HTML


class Health:
    """Open to all (load balancers, probes): 200 while every worker is up and
    can write, 503 naming what is not."""

    def __init__(self, backends: Backends) -> None:
        self.backends = backends

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        try:
            summary = await self.backends.ask_stats()
        except falcon.HTTPServiceUnavailable:
            resp.status = falcon.HTTP_503
            json_response(resp, {"status": "unhealthy", "missing": ["stats"]})
            return
        workers = summary["workers"]
        missing = [f"worker {i}" for i, w in workers.items() if not w["alive"]]
        # A worker the front has no connection to is missing too, whatever the stats process saw.
        unreachable = [peer.name for peer in self.backends.pool.peers if not peer.connected]
        missing += [name for name in unreachable if name not in missing]
        storage = {f"worker {i}": w["storage_error"] for i, w in workers.items() if w.get("storage_error")}
        if missing or storage:
            resp.status = falcon.HTTP_503
            json_response(resp, {"status": "unhealthy", "missing": missing, "unreachable": unreachable,
                                 "storage_errors": storage, "workers": workers})
        else:
            json_response(resp, {"status": "healthy", "workers": workers})


class Live:
    """Open to all: 200 while this process's loop answers. A probe that restarts
    on failure belongs here, not on /health, whose 503 a restart of the front
    would not cure (a worker down, a full disk)."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        json_response(resp, {"status": "alive", "pid": os.getpid()})


def create_app(config: Config, connections: Callable[[], int] = lambda: 0,
               backends: Optional[Backends] = None) -> falcon.asgi.App:
    """The front's app; ``connections`` counts the server's open connections."""
    backends = backends or Backends(config, connections)
    middleware: List[Any] = [backends]
    if BearerAuth.wanted(config):
        middleware.append(BearerAuth(config, backends.reject))
    app = falcon.asgi.App(middleware=middleware)
    app.add_route("/publish", Publish(backends))
    app.add_route("/events", Listing(backends))
    app.add_route("/stats", Stats(backends))
    app.add_route("/health", Health(backends))
    app.add_route("/readyz", Health(backends))
    app.add_route("/livez", Live())
    app.add_route("/metrics", Metrics(backends))
    app.add_route("/openapi.json", OpenApi(config))
    app.add_route("/docs", Docs())
    # Swagger UI's scripts from the installed swagger-ui-bundle package: no CDN at run time.
    app.add_static_route("/docs/static", str(swagger_ui_path))
    return app
