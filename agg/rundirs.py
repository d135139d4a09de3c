"""The data and run directories of ``agg run``: created, checked writable, locked.

A library of ``agg.supervisor``. Problems come back as one line naming the
setting (``data_dir: /data is not writable: Read-only file system``), never
as a traceback: a root-owned Docker volume or a read-only mount is a usual
mistake, and a child failing on it later would only say less.
"""

from __future__ import annotations

import os
from typing import IO, Optional

from .config import Config
from .partition import PartitionMismatch, ensure_data_dir
from .storage.lock import Locked, hold_lock

LOCK_FILE = "agg.lock"


def lock_run_dir(run_dir: str) -> Optional[IO[str]]:
    """Hold ``RUN_DIR/agg.lock`` for the supervisor's life (one agg per data
    directory); None if another agg holds it."""
    try:
        return hold_lock(os.path.join(run_dir, LOCK_FILE))
    except Locked:
        return None


def unwritable(path: str) -> Optional[str]:
    """Why this process cannot create files in ``path`` (a root-owned volume, a
    read-only mount), found here rather than by a child later; None if it can."""
    probe = os.path.join(path, f".agg-write-test.{os.getpid()}")
    try:
        with open(probe, "w"):
            pass
        os.unlink(probe)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def prepare_dirs(config: Config) -> Optional[str]:
    """Create and check the data and run directories; a one-line error, or None."""
    for key, path in (("data_dir", config.data_dir), ("run_dir", config.run_dir)):
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            return f"{key}: cannot create {path}: {exc.strerror}"
        why = unwritable(path)
        if why:
            return f"{key}: {path} is not writable: {why}"
        if key == "data_dir":
            try:
                ensure_data_dir(config.data_dir, config.partitions)
            except PartitionMismatch as exc:
                return str(exc)
            except OSError as exc:
                return f"data_dir: {config.data_dir}: {exc.strerror}"
    return None


def make_ipc_dirs(*endpoints: str) -> None:
    """Create the directories of ``ipc://`` endpoints an actor binds, as ``agg run``
    does for the run directory (an actor started alone may be the first there).
    A directory that cannot be made is left to the bind, which then says so."""
    for endpoint in endpoints:
        if endpoint.startswith("ipc://"):
            try:
                os.makedirs(os.path.dirname(endpoint[len("ipc://"):]) or ".", exist_ok=True)
            except OSError:
                pass
