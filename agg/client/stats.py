"""Asking the stats process directly over ZeroMQ, as ``agg-stats`` does."""

from __future__ import annotations

from typing import Any, Dict

import zmq

from .. import protocol


class NotRunning(Exception):
    """Nothing answers at the endpoint."""


def query_stats(endpoint: str, timeout: float = 2.0) -> Dict[str, Any]:
    """The stats process's summary, or NotRunning if it does not answer in time."""
    ctx: zmq.Context = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send_multipart(protocol.encode(protocol.STATS, [1, {}]))
        if not sock.poll(int(timeout * 1000)):
            raise NotRunning(f"no stats process answered at {endpoint} within {timeout:g} s")
        kind, body = protocol.decode(sock.recv_multipart())
        _req_id, ok, payload = protocol.split_reply(kind, body)
        if not ok or not isinstance(payload, dict):
            raise NotRunning(f"the stats process refused the query: {payload[1] if not ok else payload}")
        return payload
    finally:
        sock.close()
