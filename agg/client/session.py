"""The bookkeeping of one publish run, with no I/O: batches, the window of
batches in flight, retries with one backoff formula, a time limit, and what
came back (``PublishResult``). Every publisher drives one ``Session``."""

from __future__ import annotations

import dataclasses
import itertools
import random
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .. import protocol

# ERR codes worth a resend: the batch was not acknowledged for a passing reason.
TRANSIENT = {protocol.ERR_OVERLOAD, protocol.ERR_UNAVAILABLE, protocol.ERR_INTERNAL, protocol.ERR_EXPIRED}
FIRST_BACKOFF = 0.05


def backoff(tries: int, longest: float) -> float:
    """The pause before try ``tries + 1``: doubling from 50 ms up to ``longest``,
    with jitter, so that publishers refused together do not come back together."""
    pause: float = min(longest, FIRST_BACKOFF * 2 ** min(tries - 1, 30))
    return pause * random.uniform(0.5, 1.0)


@dataclasses.dataclass
class PublishResult:
    """What agg acknowledged of a run of events (the same for HTTP and ZeroMQ)."""

    events: int = 0
    acknowledged: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    failed: int = 0
    retries: int = 0
    batches: int = 0
    elapsed: float = 0.0
    errors: List[str] = dataclasses.field(default_factory=list)

    def rate(self) -> float:
        return self.acknowledged / self.elapsed if self.elapsed > 0 else 0.0

    def to_json(self) -> Dict[str, Any]:
        out = dataclasses.asdict(self)
        out["events_per_s"] = round(self.rate(), 1)
        out["elapsed"] = round(self.elapsed, 4)
        out["errors"] = self.errors[:10]
        return out

    def render(self) -> str:
        lines = [
            f"events sent       {self.events}",
            f"acknowledged      {self.acknowledged}",
            f"  stored (new)    {self.stored}",
            f"  duplicates      {self.duplicates}",
            f"rejected (4xx)    {self.rejected}",
            f"not acknowledged  {self.failed}",
            f"retries           {self.retries}",
            f"elapsed           {self.elapsed:.3f} s ({self.rate():,.0f} events/s)",
        ]
        lines += [f"error: {e}" for e in distinct(self.errors)[:5]]
        return "\n".join(lines)


def distinct(errors: Sequence[str]) -> List[str]:
    """Each error once, in order of first appearance, with how often it came."""
    counts: Dict[str, int] = {}
    for error in errors:
        counts[error] = counts.get(error, 0) + 1
    return [e if n == 1 else f"{e} (x{n})" for e, n in counts.items()]


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during ``publish``, with what was acknowledged until then."""

    def __init__(self, result: PublishResult) -> None:
        super().__init__("interrupted")
        self.result = result


@dataclasses.dataclass
class _Batch:
    events: List[Dict[str, Any]]
    tries: int = 0
    not_before: float = 0.0
    body: Optional[bytes] = None  # its encoding, where it does not change between tries


@dataclasses.dataclass(frozen=True)
class Settings:
    """How a publisher batches, waits and retries."""

    batch_size: int = 1000
    max_inflight: int = 8
    ack_timeout: float = 10.0
    max_retries: int = 20
    max_backoff: float = 2.0

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_inflight < 1:
            raise ValueError("batch_size and max_inflight must be at least 1")


class Session:
    """The bookkeeping of one ``publish`` run, with no I/O: which batches to send,
    which are in flight since when, what came back, what to resend. Both
    transports drive one."""

    def __init__(self, settings: Settings, events: Sequence[Dict[str, Any]],
                 on_ack: Optional[Callable[[int], None]], time_limit: Optional[float],
                 on_trouble: Optional[Callable[[str], None]] = None) -> None:
        size = settings.batch_size
        self.queue = [_Batch(list(events[i:i + size])) for i in range(0, len(events), size)]
        self.queue.reverse()  # pop() from the end sends in order
        self.inflight: Dict[int, Tuple[_Batch, float]] = {}
        self.s = settings
        self.ids = itertools.count(1)
        self.on_ack = on_ack
        self.on_trouble = on_trouble  # told why a try failed, each time one does
        self.last_trouble = ""
        self.start = time.monotonic()
        self.deadline = None if time_limit is None else self.start + time_limit
        self.result = PublishResult(events=len(events), batches=len(self.queue))

    @property
    def done(self) -> bool:
        return not self.queue and not self.inflight

    def next_batch(self, now: float) -> Optional[Tuple[int, _Batch]]:
        """The next batch due to go, now in flight, if the window has room."""
        if self.deadline is not None and now >= self.deadline:
            why = f"; last problem: {self.last_trouble}" if self.last_trouble else ""
            self._give_up_all(f"the time limit ({self.deadline - self.start:g} s) passed{why}")
            return None
        if len(self.inflight) >= self.s.max_inflight:
            return None
        for i in range(len(self.queue) - 1, -1, -1):  # in order, skipping those still backing off
            if self.queue[i].not_before <= now:
                batch = self.queue.pop(i)
                req_id = next(self.ids)
                batch.tries += 1
                self.inflight[req_id] = (batch, now)
                return req_id, batch
        return None

    def _give_up_all(self, reason: str) -> None:
        batches = self.queue + [batch for batch, _sent in self.inflight.values()]
        self.queue, self.inflight = [], {}
        if batches:
            self.result.failed += sum(len(b.events) for b in batches)
            self.result.errors.append(f"gave up on {len(batches)} batches: {reason}")

    def interrupt(self) -> PublishResult:
        """Stop now (Ctrl-C): what is not acknowledged yet is reported failed."""
        self._give_up_all("interrupted")
        return self.finish()

    def _retry(self, batch: _Batch, reason: str, now: float, delay: Optional[float] = None) -> None:
        self.last_trouble = reason
        if self.on_trouble is not None:
            self.on_trouble(reason)
        if batch.tries > self.s.max_retries:
            self.result.failed += len(batch.events)
            self.result.errors.append(f"gave up after {batch.tries} tries: {reason}")
            return
        self.result.retries += 1
        # The server's Retry-After is the least pause, the backoff's jitter on top;
        # max_backoff caps both (the caller's choice).
        pause = min(self.s.max_backoff, max(delay or 0.0, backoff(batch.tries, self.s.max_backoff)))
        batch.not_before = now + pause
        self.queue.append(batch)

    def _take(self, req_id: Any) -> Optional[_Batch]:
        entry = self.inflight.pop(req_id, None) if isinstance(req_id, int) else None
        return None if entry is None else entry[0]  # None: a try we already gave up waiting for

    def acknowledged(self, req_id: Any, stored: int) -> None:
        batch = self._take(req_id)
        if batch is None:
            return
        self.result.acknowledged += len(batch.events)
        self.result.stored += stored
        self.result.duplicates += len(batch.events) - stored
        if self.on_ack is not None:
            self.on_ack(len(batch.events))

    def refused(self, req_id: Any, transient: bool, reason: str, now: float,
                delay: Optional[float] = None) -> None:
        """agg said no: resend later if ``transient``, else report the batch rejected."""
        batch = self._take(req_id)
        if batch is None:
            return
        if transient:
            self._retry(batch, reason, now, delay)
        else:
            self.result.rejected += len(batch.events)
            self.result.errors.append(reason)

    def broken(self, req_id: Any, reason: str) -> None:
        """A try failed in a way a resend cannot mend (a TLS certificate agg does not pass)."""
        batch = self._take(req_id)
        if batch is not None:
            self.result.failed += len(batch.events)
            self.result.errors.append(reason)

    def on_reply(self, frames: List[bytes], now: float) -> None:
        """A native answer."""
        try:
            kind, body = protocol.decode(frames)
            req_id, ok, payload = protocol.split_reply(kind, body)
        except protocol.ProtocolError:
            return
        if ok:
            self.acknowledged(req_id, sum(1 for status in payload if status == protocol.STORED))
        else:
            code, reason, _errors = payload
            self.refused(req_id, code in TRANSIENT, f"{code}: {reason}", now)

    def lost(self, req_id: int, reason: str, now: float) -> None:
        """No answer will come for this try (not sent, the connection broke)."""
        self.refused(req_id, True, reason, now)

    def expire(self, now: float) -> None:
        for req_id, (_batch, sent) in list(self.inflight.items()):
            if now - sent >= self.s.ack_timeout:
                self.lost(req_id, f"no answer within {self.s.ack_timeout:g} s", now)

    def wait_time(self, now: float) -> float:
        """How long the caller may wait for a reply before something else is due."""
        due = [sent + self.s.ack_timeout for _b, sent in self.inflight.values()]
        if self.queue and len(self.inflight) < self.s.max_inflight:
            due.append(min(b.not_before for b in self.queue))
        if self.deadline is not None:
            due.append(self.deadline)
        return max(0.0, min(due) - now) if due else 0.0

    def finish(self) -> PublishResult:
        self.result.elapsed = time.monotonic() - self.start
        return self.result
