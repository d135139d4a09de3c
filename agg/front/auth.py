"""Bearer tokens: one Falcon hook for every route that needs one.

A resource says which token it needs with its ``scope`` attribute
(``"publish"`` or ``"read"``); the hook (middleware ``process_resource``) checks
``Authorization: Bearer TOKEN`` against ``http.publish_token`` or
``http.read_token`` before the responder runs. An empty token leaves its
routes open; with no token set at all, the hook is not installed.
"""

from __future__ import annotations

import hmac
from typing import Any, Callable, Dict

import falcon
import falcon.asgi

from ..config import Config

PUBLISH = "publish"
READ = "read"


def bearer_matches(authorization: bytes, token: bytes) -> bool:
    """Whether an Authorization header's value is ``Bearer <token>``."""
    kind, _, value = authorization.partition(b" ")
    # compare_digest takes the same time whatever matches, so the token cannot be guessed byte by byte.
    return kind.lower() == b"bearer" and hmac.compare_digest(value.strip(), token)


class BearerAuth:
    def __init__(self, config: Config, reject: Callable[[str], None]) -> None:
        self.tokens: Dict[str, bytes] = {PUBLISH: config.http.publish_token.encode(),
                                         READ: config.http.read_token.encode()}
        self.reject = reject

    @staticmethod
    def wanted(config: Config) -> bool:
        return bool(config.http.publish_token or config.http.read_token)

    async def process_resource(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                               resource: Any, params: Dict[str, Any]) -> None:
        scope = getattr(resource, "scope", None)
        token = self.tokens.get(scope, b"") if scope else b""
        if not token:
            return
        if not bearer_matches((req.get_header("Authorization") or "").encode(), token):
            self.reject("unauthorized")
            raise falcon.HTTPUnauthorized(
                title="Unauthorized", challenges=['Bearer realm="agg"'],
                description=f"{req.method} {req.path} needs 'Authorization: Bearer <token>' with the "
                            f"{scope} token (http.{scope}_token)")
