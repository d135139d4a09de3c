"""The floor agg-bench measures agg against: a bare Falcon app on uvicorn
(uvloop and httptools, as agg's front) that decodes the same one-event body
with msgspec into a typed event and answers 200 at once, storing nothing.

``python -m agg.tools.bench.bare`` binds 127.0.0.1 on a free port, prints
``http://127.0.0.1:PORT`` on its first line, and serves until SIGTERM.
"""

from __future__ import annotations

import socket
import sys
from typing import Any, Dict, Optional

import falcon
import falcon.asgi
import msgspec
import uvicorn


class BareEvent(msgspec.Struct):
    topic: str
    event_id: str
    timestamp: str
    source: str
    payload: Dict[str, Any]


class Publish:
    def __init__(self) -> None:
        self.decode = msgspec.json.Decoder(BareEvent).decode
        self.encode = msgspec.json.Encoder().encode

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        event = self.decode(await req.stream.read())
        resp.data = self.encode({"status": "accepted", "received": 1, "topic": event.topic})
        resp.content_type = falcon.MEDIA_JSON


def create_app() -> falcon.asgi.App:
    app = falcon.asgi.App()
    app.add_route("/publish", Publish())
    return app


def main(argv: Optional[list] = None) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    print(f"http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(create_app(), loop="uvloop", http="httptools", lifespan="off",
                            access_log=False, log_level="warning", proxy_headers=False)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
