"""One GET of agg's HTTP API for the tools that read (``agg-stats --url``,
``agg-tail``), with the read token, and errors that say what to do."""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from typing import Any, Optional

from ..client import NotRunning

# The client's own variable first; then the server's, so that one environment serves both.
TOKEN_ENVS = ("AGG_READ_TOKEN", "AGG_HTTP_READ_TOKEN")


class Denied(NotRunning):
    """agg answers, but not with what was asked (a token missing, a 503)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def read_token(given: Optional[str]) -> Optional[str]:
    if given:
        return given
    return next((os.environ[name] for name in TOKEN_ENVS if os.environ.get(name)), None)


def get_json(base: str, path: str, timeout: float, token: Optional[str] = None,
             tls: Optional[ssl.SSLContext] = None) -> Any:
    """The JSON answer of ``GET base + path``; NotRunning if nothing answers,
    Denied if agg answers with an error."""
    target = base.rstrip("/") + path
    request = urllib.request.Request(target)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=tls) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            hint = ("the token given is not agg's http.read_token" if token else
                    "give agg's http.read_token (AGG_HTTP_READ_TOKEN) as --token or $AGG_READ_TOKEN")
            raise Denied(f"GET {target} answered 401 Unauthorized: {hint}", 401) from None
        raise Denied(f"GET {target} answered HTTP {exc.code} {exc.reason}{_description(exc)}",
                     exc.code) from None
    except urllib.error.URLError as exc:
        reason = getattr(exc.reason, "strerror", None) or str(exc.reason)
        raise NotRunning(f"agg is not running at {base}: {reason.lower()}") from None
    except (OSError, ValueError) as exc:
        raise NotRunning(f"agg is not running at {base}: {getattr(exc, 'strerror', None) or exc}") from None


def _description(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read())
        return f": {body['description']}" if isinstance(body, dict) and body.get("description") else ""
    except (OSError, ValueError):
        return ""
