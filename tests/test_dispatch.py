"""The front's side of a worker: ``Peer`` against a real ROUTER socket.

The test process plays the worker, so that what leaves the front in one
message, and how its answer is shared out, can be seen exactly."""

import asyncio
from typing import Any, Awaitable, Callable, List

import pytest
import zmq
import zmq.asyncio

from agg import protocol
from agg.dispatch import Peer, PeerError, Unavailable
from agg.protocol import Event, Part


def event(n: int) -> Event:
    return Event("t", f"e{n}", "2025-10-21T14:30:00Z", "s", b"{}")


def with_worker(tmp_path, test: Callable[[Peer, zmq.asyncio.Socket], Awaitable[None]]) -> None:
    async def run() -> None:
        ctx = zmq.asyncio.Context()
        endpoint = f"ipc://{tmp_path}/w.sock"
        router = ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.bind(endpoint)
        peer = Peer(ctx, endpoint, "worker 0")
        peer.start()
        try:
            # IMMEDIATE: the peer can send once it is connected, which POLLOUT says.
            assert zmq.Socket.shadow(peer.sock.underlying).poll(10000, zmq.POLLOUT), "never connected"
            await test(peer, router)
        finally:
            peer.close()
            router.close()
            ctx.term()
    asyncio.run(run())


async def receive_store(router: zmq.asyncio.Socket) -> List[Any]:
    frames = await asyncio.wait_for(router.recv_multipart(), 10)
    kind, (req_id, parts, deadline) = protocol.decode(frames[1:])
    assert kind == protocol.STORE and deadline > 0
    return [frames[0], req_id, parts]


def test_requests_of_one_turn_leave_as_one_message_and_each_gets_its_statuses(tmp_path) -> None:
    async def test(peer: Peer, router: zmq.asyncio.Socket) -> None:
        futures = [peer.submit([Part(0, [event(1), event(2)])], 100, 10),
                   peer.submit([Part(1, [event(3)])], 50, 10),
                   peer.submit([Part(0, [event(4)]), Part(2, [event(5), event(6)])], 150, 10)]
        assert peer.window.events == 6 and peer.window.bytes == 300
        rid, req_id, parts = await receive_store(router)
        # One part per partition, its events in the order the requests came.
        assert [p for p, _events in parts] == [0, 1, 2]
        assert [e[1] for _p, events in parts for e in events] == ["e1", "e2", "e4", "e3", "e5", "e6"]
        assert peer.inflight_events == 6
        # e1..e6 are stored, duplicate, stored, duplicate, stored, stored: in the message's order.
        await router.send_multipart([rid] + protocol.encode_ok(req_id, b"\x01\x00\x00\x01\x01\x01"))
        assert await asyncio.gather(*futures) == [b"\x01\x00", b"\x01", b"\x00\x01\x01"]
        assert peer.inflight_events == 0 and not peer.pending
    with_worker(tmp_path, test)


def test_a_worker_error_reaches_every_request_of_the_message(tmp_path) -> None:
    async def test(peer: Peer, router: zmq.asyncio.Socket) -> None:
        futures = [peer.submit([Part(0, [event(1)])], 50, 10), peer.submit([Part(1, [event(2)])], 50, 10)]
        rid, req_id, _parts = await receive_store(router)
        await router.send_multipart([rid] + protocol.encode_err(req_id, protocol.ERR_INTERNAL, "disk"))
        for outcome in await asyncio.gather(*futures, return_exceptions=True):
            assert isinstance(outcome, PeerError) and outcome.reason == "disk"
        assert peer.inflight_events == 0
    with_worker(tmp_path, test)


def test_an_unanswered_message_times_out_and_frees_its_events(tmp_path) -> None:
    async def test(peer: Peer, router: zmq.asyncio.Socket) -> None:
        future = peer.submit([Part(0, [event(1), event(2)])], 100, 0.2)
        await receive_store(router)  # taken, never answered
        with pytest.raises(Unavailable, match="did not answer within 0.2 s"):
            await asyncio.wait_for(future, 10)
        assert peer.inflight_events == 0 and not peer.pending
    with_worker(tmp_path, test)
