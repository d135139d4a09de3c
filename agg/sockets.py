"""The one NOBLOCK receive loop, for every process's ZeroMQ sockets."""

from __future__ import annotations

from typing import AsyncIterator, Iterator, List

import zmq
import zmq.asyncio


def drain(sock: zmq.Socket) -> Iterator[List[bytes]]:
    """Every message waiting on ``sock`` now, without blocking (a caller that
    has had enough stops iterating; the rest wait for the next drain)."""
    recv = sock.recv_multipart
    while True:
        try:
            yield recv(zmq.NOBLOCK)
        except zmq.Again:
            return


async def adrain(sock: zmq.asyncio.Socket) -> AsyncIterator[List[bytes]]:
    """``drain`` for an asyncio socket."""
    while True:
        try:
            yield await sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
