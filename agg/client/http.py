"""The HTTP publisher (``POST /publish`` from a few threads), and the bytes of
one keep-alive POST /publish and the reading of its answer, for asyncio load
generators."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import ssl
import threading
import time
import urllib.parse
from typing import Any, Callable, Dict, Iterable, NamedTuple, Optional, Tuple, Union

from .session import Interrupted, PublishResult, Settings, Session


def tls_context(cafile: Optional[str] = None, insecure: bool = False) -> ssl.SSLContext:
    """Certificate checks as a browser does them, against ``cafile`` if given
    (a private CA, a self-signed proxy); ``insecure`` checks nothing."""
    context = ssl.create_default_context(cafile=cafile)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class HttpPublisher:
    """POSTs batches to ``URL/publish``, one keep-alive connection per thread,
    ``max_inflight`` threads: ``HttpPublisher(url).publish(events) -> PublishResult``.
    A 503's ``Retry-After`` sets the pause before its resend (at most ``max_backoff``).
    An ``https://`` URL is checked against the system's CAs, or ``tls=tls_context(...)``."""

    def __init__(self, url: str, *, batch_size: int = 500, max_inflight: int = 4, ack_timeout: float = 30.0,
                 max_retries: int = 30, max_backoff: float = 2.0, token: Optional[str] = None,
                 tls: Optional[ssl.SSLContext] = None) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"the URL must be http://HOST:PORT or https://HOST:PORT, got {url}")
        self.settings = Settings(batch_size, max_inflight, ack_timeout, max_retries, max_backoff)
        self.url = url.rstrip("/")
        self.tls = (tls or tls_context()) if parsed.scheme == "https" else None
        self.host, self.port = parsed.hostname, parsed.port or (443 if self.tls else 80)
        self.path = parsed.path.rstrip("/") + "/publish"
        self.headers = {"Content-Type": "application/json"}
        token = token if token is not None else os.environ.get("AGG_PUBLISH_TOKEN")
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def publish(self, events: Iterable[Dict[str, Any]], on_ack: Optional[Callable[[int], None]] = None,
                time_limit: Optional[float] = None,
                on_trouble: Optional[Callable[[str], None]] = None) -> PublishResult:
        """Send every event; return once each is acknowledged, rejected or given up on.
        ``on_trouble(reason)`` hears of each failed try. Ctrl-C raises ``Interrupted``,
        which holds what was acknowledged until then."""
        session = Session(self.settings, list(events), on_ack, time_limit, on_trouble)
        lock = threading.Condition()
        threads = [threading.Thread(target=self._sender, args=(session, lock), daemon=True)
                   for _ in range(min(self.settings.max_inflight, max(1, len(session.queue))))]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        except KeyboardInterrupt:
            with lock:  # the senders see a finished session and leave after their request
                result = session.interrupt()
                lock.notify_all()
            raise Interrupted(result) from None
        return session.finish()

    def _connection(self, conn: Optional[http.client.HTTPConnection],
                    session: Session) -> http.client.HTTPConnection:
        """``conn``, or a new one, with a timeout that ends by the time limit."""
        timeout = self.settings.ack_timeout
        if session.deadline is not None:
            timeout = max(0.05, min(timeout, session.deadline - time.monotonic()))
        if conn is None:
            if self.tls is not None:
                conn = http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=self.tls)
            else:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def _sender(self, session: Session, lock: threading.Condition) -> None:
        conn: Optional[http.client.HTTPConnection] = None
        while True:
            with lock:
                taken = None
                while taken is None and not session.done:
                    taken = session.next_batch(time.monotonic())
                    if taken is None and not session.done:
                        lock.wait(max(0.001, session.wait_time(time.monotonic())))
                if taken is None:
                    lock.notify_all()
                    if conn is not None:
                        conn.close()
                    return
            req_id, batch = taken
            conn = self._connection(conn, session)
            if batch.body is None:
                batch.body = json.dumps({"events": batch.events}).encode()
            outcome = self._post(conn, batch.body)
            if isinstance(outcome, Refusal) and outcome.broken:
                conn.close()
                conn = None  # a new connection for the next try
            with lock:
                if isinstance(outcome, Refusal) and outcome.fatal:
                    session.broken(req_id, outcome.reason)
                elif isinstance(outcome, Refusal):
                    session.refused(req_id, outcome.transient, outcome.reason, time.monotonic(), outcome.delay)
                else:
                    session.acknowledged(req_id, outcome)
                lock.notify_all()

    def _post(self, conn: http.client.HTTPConnection, body: bytes) -> Union[int, "Refusal"]:
        """The count of the events of ``body`` stored now, or why they were not acknowledged."""
        try:
            conn.request("POST", self.path, body=body, headers=self.headers)
            resp = conn.getresponse()
            data = resp.read()
        except ssl.SSLCertVerificationError as exc:
            return Refusal(False, f"TLS: {self.url}: {exc.verify_message}", broken=True, fatal=True)
        except (OSError, http.client.HTTPException) as exc:
            return Refusal(True, self._connection_error(exc, conn.timeout), broken=True)
        if resp.status == 200:
            return int(json.loads(data)["stored"])
        reason = f"HTTP {resp.status}: {_reason(data)}"
        if resp.status in (502, 503, 504):
            retry_after = resp.getheader("Retry-After")
            return Refusal(True, reason, float(retry_after) if retry_after and retry_after.isdigit() else None)
        return Refusal(False, reason)

    def _connection_error(self, exc: Exception, timeout: Optional[float]) -> str:
        if isinstance(exc, ConnectionRefusedError):
            return f"cannot connect to {self.url}: connection refused"
        if isinstance(exc, socket.timeout):  # TimeoutError from 3.10 on
            return f"no answer from {self.url} within {timeout or 0:.3g} s"
        if isinstance(exc, OSError) and exc.strerror:
            return f"cannot connect to {self.url}: {exc.strerror}"
        return f"connection to {self.url} lost: {exc or type(exc).__name__}"


class Refusal(NamedTuple):
    """An HTTP answer that acknowledged nothing."""

    transient: bool  # worth a resend
    reason: str
    delay: Optional[float] = None  # the Retry-After, if any
    broken: bool = False  # the connection is gone
    fatal: bool = False  # no resend can mend it


def _reason(data: bytes) -> str:
    try:
        body = json.loads(data)
        return str(body.get("description") or body.get("title") or body)[:300]
    except ValueError:
        return data[:200].decode("utf-8", "replace")


def publish_request(body: bytes) -> bytes:
    """A keep-alive ``POST /publish`` of the JSON ``body``."""
    return (b"POST /publish HTTP/1.1\r\nHost: agg\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body)


async def read_response(reader: asyncio.StreamReader) -> Tuple[bytes, bytes]:
    """The head and the body of one HTTP/1.1 response (agg's have a Content-Length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    return head, await reader.readexactly(length)
