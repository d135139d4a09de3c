"""CPU time and resident memory of agg's processes, read from ``/proc``.

A library of the front's ``/metrics``. The processes are the supervisor and
its children as listed in ``RUN_DIR/endpoints.json`` (so only under ``agg
run``, on the front's host); a process that has gone since is skipped.
Linux only: elsewhere there is nothing to read and nothing is reported.
"""

from __future__ import annotations

import json
import os
from typing import Dict, NamedTuple, Optional

TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class Usage(NamedTuple):
    cpu_seconds: float
    rss_bytes: int


def usage(pid: int) -> Optional[Usage]:
    """The CPU time (user + system) and RSS of ``pid``; None if it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After "pid (comm)": state is field 3, utime 14, stime 15, rss 24 (man 5 proc).
    return Usage((int(fields[11]) + int(fields[12])) / TICKS, int(fields[21]) * PAGE)


def agg_processes(run_dir: str) -> Dict[str, int]:
    """Name -> pid of the supervisor and its children; empty without a supervisor."""
    try:
        with open(os.path.join(run_dir, "endpoints.json")) as fh:
            info = json.load(fh)
    except (OSError, ValueError):
        return {}
    names = {"supervisor": info.get("pid")}
    names.update(info.get("children") or {})
    return {name: pid for name, pid in names.items() if isinstance(pid, int)}


def usage_by_process(run_dir: str) -> Dict[str, Usage]:
    out = {}
    for name, pid in agg_processes(run_dir).items():
        found = usage(pid)
        if found is not None:
            out[name] = found
    return out
