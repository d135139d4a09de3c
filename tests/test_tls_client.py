"""agg-publish and agg-tail over https:// through a TLS-terminating proxy, as
the README recommends; the proxy and its self-signed certificate are made here
(openssl CLI), so the certificate checks are real."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import urllib.parse
from typing import Iterator, List, Tuple

import pytest

from conftest import AggSystem


def make_certificate(base: str) -> Tuple[str, str]:
    openssl = shutil.which("openssl")
    assert openssl, "the openssl command is needed to make the test's certificate"
    cert, key = os.path.join(base, "cert.pem"), os.path.join(base, "key.pem")
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


class TlsProxy:
    """Accepts TLS on 127.0.0.1:PORT and pipes the plain bytes to ``upstream``."""

    def __init__(self, cert: str, key: str, upstream: Tuple[str, int]) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)  # how often the accept loop looks at ``stopped``
        self.port = self.listener.getsockname()[1]
        self.stopped = threading.Event()
        self.sockets: List[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(None)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        self.sockets.append(conn)
        try:
            tls = self.context.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            conn.close()  # a client that did not trust us: what the test checks
            return
        plain = socket.create_connection(self.upstream, timeout=30)
        self.sockets += [tls, plain]
        pump = threading.Thread(target=self._pipe, args=(plain, tls), daemon=True)
        pump.start()
        self._pipe(tls, plain)
        pump.join(30)

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            _close(sock)

    def stop(self) -> None:
        self.stopped.set()
        self.listener.close()
        for sock in list(self.sockets):
            _close(sock)
        for thread in self.threads:
            thread.join(5)
        assert not any(t.is_alive() for t in self.threads), "a proxy thread did not stop"


def _close(sock: socket.socket) -> None:
    """Close ``sock``, waking a thread blocked in its recv (close alone does not)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


@pytest.fixture
def proxy(agg: AggSystem, tmp_base: str) -> Iterator[Tuple[TlsProxy, str]]:
    cert, key = make_certificate(tmp_base)
    upstream = urllib.parse.urlsplit(agg.url)
    server = TlsProxy(cert, key, (upstream.hostname or "127.0.0.1", upstream.port or 80))
    yield server, cert
    server.stop()


def publish(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agg.tools.publish", "--json", "--events", "300", *args],
                          capture_output=True, text=True, timeout=60)


def test_publish_over_https_checks_the_certificate(agg: AggSystem, proxy: Tuple[TlsProxy, str]) -> None:
    server, cert = proxy
    url = f"https://localhost:{server.port}"
    trusted = publish("--url", url, "--cacert", cert)
    assert trusted.returncode == 0, trusted.stderr
    assert json.loads(trusted.stdout)["stored"] == 240
    agg.wait_stats(300, 240, 60)

    # Not trusted: a one-line reason at once, not thirty retries until the time limit.
    untrusted = publish("--url", url, "--time-limit", "60")
    assert untrusted.returncode == 1
    summary = json.loads(untrusted.stdout)
    assert summary["acknowledged"] == 0 and summary["retries"] == 0 and summary["elapsed"] < 10
    assert "self-signed certificate" in untrusted.stderr and "--cacert" in untrusted.stderr, \
        untrusted.stderr

    insecure = publish("--url", url, "--insecure", "--seed", "9")
    assert insecure.returncode == 0 and json.loads(insecure.stdout)["acknowledged"] == 300, insecure.stderr


def test_tail_over_https(agg: AggSystem, proxy: Tuple[TlsProxy, str]) -> None:
    server, cert = proxy
    assert publish("--url", agg.url).returncode == 0
    out = subprocess.run([sys.executable, "-m", "agg.tools.tail", "--url", f"https://127.0.0.1:{server.port}",
                          "--cacert", cert, "--from-start", "--count", "5"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert len([json.loads(line) for line in out.stdout.splitlines()]) == 5
