"""A page of GET /events, merged from the workers' rows a slice at a time.

Each worker answers the rows after a position in processing order, and the
page is their merge. Asking every worker for the whole ``limit`` decodes
``workers × limit`` rows to keep ``limit`` of them, each worker's answer in
one turn of the edge's loop (a page of 10,000 events of 1 KB: tens of ms a
turn, while every request the front holds waits, and admission takes the
late loop for overload). So a worker is asked for ``SLICE`` rows, and asked
again only when its rows run out before the page is full: about
``limit + workers × SLICE`` rows are decoded, a slice per turn.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Awaitable, Callable, Deque, Dict, List, Tuple

from ..protocol import StoredRow, processing_order

SLICE = 1000

# fetch(worker, position, limit): that worker's rows after position, in processing order.
Fetch = Callable[[int, Dict[int, int], int], Awaitable[List[StoredRow]]]
Keyed = Tuple[Tuple[str, int, int], StoredRow]


async def merged_page(fetch: Fetch, workers: List[int], position: Dict[int, int],
                      limit: int) -> List[StoredRow]:
    """Up to ``limit`` rows after ``position``, in processing order, from ``workers``."""
    ask = min(limit, SLICE)
    held: Dict[int, Deque[Keyed]] = {w: collections.deque() for w in workers}
    start = {w: dict(position) for w in workers}  # where each worker's next slice begins
    more = set(workers)  # the workers whose last slice was full: they may hold more rows
    rows: List[StoredRow] = []
    while len(rows) < limit:
        empty = [w for w in workers if w in more and not held[w]]
        slices = await asyncio.gather(*(fetch(w, start[w], ask) for w in empty))
        for w, got in zip(empty, slices):
            if len(got) < ask:
                more.discard(w)
            for row in got:
                held[w].append((processing_order(row), row))
                start[w][row.partition] = row.seq
        heads = [w for w in workers if held[w]]
        # Take the least head while every worker that may hold more rows holds some here.
        while heads and len(rows) < limit:
            w = min(heads, key=lambda w: held[w][0][0])
            rows.append(held[w].popleft()[1])
            if not held[w]:
                heads.remove(w)
                if w in more:
                    break  # its next rows may come before the others' heads
        if not heads and not more:
            break
    return rows
