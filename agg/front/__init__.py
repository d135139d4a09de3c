"""HTTP front: the Falcon ASGI app that keeps the seed's API, served by uvicorn.

Binds:     TCP ``http.host``:``http.port`` (port 0: any free port, announced in READY).
Connects:  a DEALER to every worker (``agg.dispatch.WorkerPool``), a DEALER to
           the stats process, and a PUB to ``endpoints.stats_in`` for its own
           report (requests rejected, events in flight; ``agg.edgereport``).
Owns:      nothing durable; every answer to POST /publish comes after commit.
Stops:     on SIGTERM, after in-flight requests are answered (uvicorn's drain).

Modules: ``app`` builds the Falcon app (``create_app(config)``) and its
sockets' lifespan; ``publish`` and ``listing`` are the POST /publish and
GET /events resources; ``auth`` the bearer-token hook; ``cursor`` the codec
of GET /events cursors; ``gate`` the ASGI app before Falcon that refuses a
publish admission cannot take; ``server`` the uvicorn server (``run``, ``main``).
"""

from .app import create_app
from .server import main, run

__all__ = ["create_app", "main", "run"]
