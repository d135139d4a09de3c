"""An edge's admission by its own CPU, in-process, on a real event loop and a
real WorkerPool (its windows are the edge's own; no worker needs to run): the
batches still to decode, the loop's lateness, and the publish first in line.
The spawned versions are in test_flow and test_admission; there, which of the
two rules answers first depends on the machine."""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable

import pytest
import zmq.asyncio

from agg.admission import Admission, Refused
from agg.config import defaults
from agg.dispatch import WorkerPool
from agg.looplag import LoopLag

MIB = 2**20
# 750 events at the first guess of 200 bytes each: 7.5 ms to decode at the first guess of 10 µs each.
BATCH = 150_000


def with_admission(test: Callable[[Admission, LoopLag], Awaitable[None]]) -> None:
    async def run() -> None:
        ctx = zmq.asyncio.Context()
        pool = WorkerPool(ctx, defaults())
        lag = LoopLag("ingest", 0.02)
        try:
            await test(Admission("ingest", pool, 64, 64 * MIB, lag), lag)
        finally:
            lag.stop()
            pool.close()
            ctx.term()
    asyncio.run(run())


def test_batches_past_what_the_edge_decodes_in_max_lag_are_refused() -> None:
    async def test(admission: Admission, _lag: LoopLag) -> None:
        first = admission.admit(BATCH, whole=True)
        second = admission.admit(BATCH, whole=True)  # 7.5 ms ahead of it: taken
        assert admission.undecoded == 1500
        with pytest.raises(Refused, match=r"has 1500 events to decode before this request, about 2\d ms"):
            admission.admit(BATCH, whole=True)
        first.read(750)  # decoded: no longer ahead of anything
        third = admission.admit(BATCH, whole=True)
        for ticket in (first, second, third):
            ticket.release()
        assert (admission.publishes, admission.undecoded, admission.bytes) == (0, 0, 0)
        # A body still being read over HTTP is no decoding yet, whatever its size.
        body = admission.admit(20 * BATCH)
        assert admission.undecoded == 0
        admission.admit(BATCH, whole=True).release()
        body.release()
    with_admission(test)


def test_the_publish_first_in_line_is_taken_whatever_it_holds_the_loop_for() -> None:
    async def test(admission: Admission, lag: LoopLag) -> None:
        big = admission.admit(60 * BATCH, whole=True)  # 0.45 s of decoding: nothing waits behind it yet
        with pytest.raises(Refused, match="to decode before this request"):
            admission.admit(100, whole=True)
        big.release()
        time.sleep(0.06)  # the loop held for 60 ms, with nothing held: no lateness is kept
        await asyncio.sleep(0)
        assert lag.late == 0.0
        admission.admit(100, whole=True).release()
    with_admission(test)


def test_a_late_loop_refuses_while_a_publish_is_held_and_not_after() -> None:
    async def test(admission: Admission, lag: LoopLag) -> None:
        held = admission.admit(100, whole=True)  # first in line; the lateness is measured from now
        held.read(1)
        time.sleep(0.06)  # one turn of 60 ms, as a saturated loop's
        deadline = time.monotonic() + 5
        while lag.late == 0.0:  # until the timer has run, late
            assert time.monotonic() < deadline, "the timer never ran"
            await asyncio.sleep(0)
        with pytest.raises(Refused, match=r"the ingest runs \d+ ms behind the requests it holds"):
            admission.admit(100, whole=True)
        held.release()  # nothing held: the next is first in line, and the timer stops
        assert lag.handle is None and lag.late == 0.0
        admission.admit(100, whole=True).release()
    with_admission(test)
