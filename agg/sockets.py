"""Small helpers for ZeroMQ sockets, shared by every process."""

from __future__ import annotations

from typing import Iterator, List

import zmq


def drain(sock: zmq.Socket) -> Iterator[List[bytes]]:
    """Every message waiting on ``sock`` now, without blocking (a caller that
    has had enough stops iterating; the rest wait for the next drain)."""
    recv = sock.recv_multipart
    while True:
        try:
            yield recv(zmq.NOBLOCK)
        except zmq.Again:
            return
