"""The front's first check of a publish, before Falcon sees it.

Under overload about half the publishes are refused, and through Falcon each
refusal costs about what an admitted request costs up to its responder: its
routing, its request and response objects, an exception rendered. That CPU
is taken from the requests the front admits, and every refusal waits behind
them. The gate is the ASGI app uvicorn calls; it asks admission first, and a
publish that admission would refuse now gets its 503 and Retry-After from a
few lines here, before its body is read; so does one whose declared body
is over the limit (413, and the connection closed: its body is not wanted).
What the gate passes, Falcon admits or refuses as before (the bounds may
have moved in between); with a publish token set, the gate passes every
request without it, for Falcon's 401.
"""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

import orjson

from .auth import bearer_matches
from .backends import NOTHING_ACKNOWLEDGED, Backends, too_large

Scope = Dict[str, Any]
UNAVAILABLE = "Service unavailable"
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


class Gate:
    def __init__(self, app: ASGIApp, backends: Backends) -> None:
        self.app = app
        self.backends = backends
        config = backends.config
        self.max_body = config.limits.max_body_bytes
        self.retry_after = b"%d" % config.limits.retry_after_s
        self.token = config.http.publish_token.encode()
        self.observe = backends.metrics.publish_seconds.labels("unavailable").observe

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        answer = self.refusal(scope) if scope["type"] == "http" else None
        if answer is None:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status, title, description, close = answer
        body = orjson.dumps({"title": title, "description": description})
        headers: List[Tuple[bytes, bytes]] = [
            (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        if status == 503:
            headers.append((b"retry-after", self.retry_after))
        if close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        if status == 503:
            self.observe(time.perf_counter() - start)

    def refusal(self, scope: Scope) -> Optional[Tuple[int, str, str, bool]]:
        """(status, title, description, close the connection) for a publish to
        refuse now, or None."""
        if scope["path"] != "/publish" or scope["method"] != "POST":
            return None
        backends = self.backends
        admission = getattr(backends, "admission", None)  # made at the app's start-up
        if admission is None:
            return None
        length = 0
        authorization = b""
        for name, value in scope["headers"]:  # uvicorn gives the names in lower case
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    return None  # Falcon says 400
            elif name == b"authorization":
                authorization = value
        if self.token and not bearer_matches(authorization, self.token):
            return None
        if length > self.max_body:
            backends.reject("too_large")
            return 413, "Body too large", too_large(length, self.max_body), True
        crowded = backends.over_connections()
        if crowded is not None:
            return 503, UNAVAILABLE, crowded + NOTHING_ACKNOWLEDGED, True
        reason = admission.refusal(length)
        return None if reason is None else (503, UNAVAILABLE, reason + NOTHING_ACKNOWLEDGED, False)
