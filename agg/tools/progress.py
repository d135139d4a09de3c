"""What ``agg-publish`` says on stderr while it runs: a progress bar on a
terminal, and a line when agg does not answer, said once rather than per try."""

from __future__ import annotations

import sys
import threading
import time
from typing import Optional

# A new line about trouble only if it is another trouble and the last line is this old.
RESAY_AFTER_S = 5.0
# Nothing acknowledged for this long, and no failed try to tell of: say what we wait for.
QUIET_AFTER_S = 1.5


class Progress:
    """A one-line progress bar on a terminal; silent otherwise."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled
        self.done = 0
        self.start = time.monotonic()
        self.last_draw = 0.0
        self.lock = threading.Lock()

    def advance(self, n: int) -> None:
        with self.lock:
            self.done += n
            now = time.monotonic()
            if self.enabled and (now - self.last_draw > 0.1 or self.done >= self.total):
                self.last_draw = now
                self._draw(now)

    def _draw(self, now: float) -> None:
        width = 30
        filled = int(width * self.done / max(self.total, 1))
        rate = self.done / max(now - self.start, 1e-9)
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] "
                         f"{self.done}/{self.total} events  {rate:,.0f}/s")
        sys.stderr.flush()

    def line(self, text: str) -> None:
        """A line of its own above the bar, which is drawn again after it."""
        with self.lock:
            sys.stderr.write(("\r\x1b[K" if self.enabled else "") + text + "\n")
            if self.enabled:
                self._draw(time.monotonic())
            sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


class Trouble:
    """Tells the user why agg does not acknowledge: the first failed try at once,
    a different reason again only after ``RESAY_AFTER_S``, and, if nothing at all
    has come back after ``QUIET_AFTER_S``, what it is waiting for."""

    def __init__(self, prog: str, target: str, time_limit: float, progress: Progress) -> None:
        self.prog = prog
        self.target = target
        self.progress = progress
        self.deadline = time.monotonic() + time_limit
        self.said: Optional[str] = None
        self.said_at = 0.0
        self.lock = threading.Lock()
        self.timer = threading.Timer(QUIET_AFTER_S, self._quiet)
        self.timer.daemon = True

    def __enter__(self) -> "Trouble":
        self.timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.timer.cancel()

    def _left(self) -> str:
        return f"retrying for up to {max(0.0, self.deadline - time.monotonic()):.0f} s more (--time-limit)"

    def _say(self, reason: str) -> None:
        self.said, self.said_at = reason, time.monotonic()
        self.progress.line(f"{self.prog}: {reason}; {self._left()}")

    def __call__(self, reason: str) -> None:
        with self.lock:
            if self.said is None or (reason != self.said
                                     and time.monotonic() - self.said_at >= RESAY_AFTER_S):
                self._say(reason)

    def _quiet(self) -> None:
        with self.lock:
            if self.said is None and self.progress.done == 0:
                self._say(f"no answer from {self.target} yet")
