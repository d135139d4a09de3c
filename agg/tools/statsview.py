"""How ``agg-stats`` draws the statistics: the one-shot table, and the frames
of ``--watch`` cut to the terminal. Every topic name goes through
``screen.visible``: publishers choose them, the operator's terminal must not
obey them."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

from .screen import fit, visible, width

# Columns of a topic row besides the name: three counters of 10 and their spaces.
COUNTER_COLUMNS = 33


def totals(stats: Dict[str, Any]) -> List[str]:
    return [
        f"received           {stats['received']:>12,}",
        f"unique_processed   {stats['unique_processed']:>12,}",
        f"duplicate_dropped  {stats['duplicate_dropped']:>12,}",
        f"rejected           {stats.get('rejected', 0):>12,}",
        f"uptime             {stats['uptime']:>12,.1f} s",
    ]


def topic_table(counts: Dict[str, Any], name_width: Optional[int] = None) -> List[str]:
    """The header and one row per topic, names escaped and cut to ``name_width``."""
    names = {topic: visible(topic) for topic in counts}
    widest = max([len("topic"), *(width(n) for n in names.values())])
    name_width = widest if name_width is None else max(len("topic"), min(widest, name_width))
    lines = [f"{'topic':<{name_width}} {'received':>10} {'unique':>10} {'duplicates':>10}"]
    for topic, c in counts.items():
        name = fit(names[topic], name_width)
        pad = " " * (name_width - width(name))
        lines.append(f"{name}{pad} {c['received']:>10,} {c['unique_processed']:>10,} "
                     f"{c['duplicate_dropped']:>10,}")
    return lines


def render(stats: Dict[str, Any]) -> str:
    lines = totals(stats)
    workers = stats.get("workers") or {}
    if workers:
        lines.append("")
        lines.append(f"{'worker':<8} {'state':<6} {'pid':>8}  partitions")
        for index, info in sorted(workers.items(), key=lambda kv: int(kv[0])):
            state = "up" if info["alive"] else "DOWN"
            lines.append(f"{index:<8} {state:<6} {info['pid'] or '-':>8}  "
                         f"{','.join(str(p) for p in info['partitions'])}")
    counts = stats.get("topic_counts") or {}
    if counts:
        lines.append("")
        lines += topic_table(counts)
    return "\n".join(lines)


def watch_head(stats: Dict[str, Any], previous: Optional[Dict[str, Any]], elapsed: float) -> List[str]:
    """The lines of a --watch frame above the topics: rates since the previous frame, workers."""
    def rate(now: float, before: float) -> str:
        return f"{(now - before) / elapsed:>10,.0f}/s" if previous and elapsed > 0 else f"{'-':>12}"

    prev = previous or {}
    lines = [
        f"agg  up {stats['uptime']:,.0f} s   "
        f"in {rate(stats['received'], prev.get('received', 0)).strip()}   "
        f"unique {rate(stats['unique_processed'], prev.get('unique_processed', 0)).strip()}   "
        f"duplicates {rate(stats['duplicate_dropped'], prev.get('duplicate_dropped', 0)).strip()}",
    ]
    if "inflight_events" in stats:
        lines.append("queue depth (events in flight per worker): "
                     + ", ".join(str(n) for n in stats["inflight_events"]))
    lines.append("")
    lines.append(f"{'worker':<8} {'state':<6} {'pid':>8} {'restarts':>8} {'events in':>14} {'received':>12}")
    before_workers = prev.get("workers", {})
    restarts = stats.get("restarts", {})
    for index, info in sorted(stats.get("workers", {}).items(), key=lambda kv: int(kv[0])):
        state = "up" if info["alive"] else "DOWN"
        if info.get("storage_error"):
            state = "DISK"
        was = before_workers.get(index, {}).get("received", 0)
        lines.append(f"{index:<8} {state:<6} {info['pid'] or '-':>8} {restarts.get(f'worker.{index}', 0):>8} "
                     f"{rate(info.get('received', 0), was):>14} {info.get('received', 0):>12,}")
    lines.append("")
    return lines


def render_watch(stats: Dict[str, Any], previous: Optional[Dict[str, Any]], elapsed: float,
                 size: os.terminal_size) -> str:
    """One frame of --watch, no taller than the terminal less a line, no line wider:
    the busiest topics first, and how many did not fit."""
    lines = watch_head(stats, previous, elapsed)
    counts = stats.get("topic_counts") or {}
    room = size.lines - 1 - len(lines)
    if not counts:
        lines.append("(no events yet)")
    elif room >= 2:
        busiest = dict(sorted(counts.items(), key=lambda kv: -kv[1]["received"]))
        table = topic_table(busiest, size.columns - COUNTER_COLUMNS)
        if len(table) > room:
            table = table[:room - 1] + [f"({len(counts) - (room - 2)} more topics; a taller terminal shows them)"]
        lines += table
    return "\n".join(fit(line, size.columns) for line in lines[:max(1, size.lines - 1)])
