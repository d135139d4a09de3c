"""Exclusive file locks that last as long as the process holds them.

A shard is locked by the worker that opens it (a second worker given the same
partition is refused), and a run directory by its supervisor (one agg per
data directory). The kernel drops an ``flock`` when its process dies, even by
SIGKILL, so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
from typing import IO


class Locked(Exception):
    """Another process holds the lock."""


def hold_lock(path: str) -> IO[str]:
    """Lock ``path`` (created if missing) for this process and write its pid
    there; ``Locked`` if another process holds it. The lock lasts while the
    returned file is open."""
    fh = open(path, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise Locked(path) from None
    fh.truncate(0)
    fh.write(str(os.getpid()))
    fh.flush()
    return fh
