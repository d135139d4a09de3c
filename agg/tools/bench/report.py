"""agg-bench's figures: a run's results summarised, and the table printed."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

WINDOW = 100_000  # "first and last 100k events"


def summarize(results: List[Tuple[float, float, int]]) -> Dict[str, Any]:
    if not results:
        return {"events": 0, "events_per_s": 0.0}
    start = min(r[0] for r in results)
    end = results[-1][1]
    events = sum(r[2] for r in results)
    lat = sorted((r[1] - r[0]) * 1000 for r in results)
    out = {
        "events": events,
        "requests": len(results),
        "seconds": round(end - start, 3),
        "events_per_s": round(events / max(end - start, 1e-9), 1),
        "p50_ms": round(lat[len(lat) // 2], 2),
        "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 2),
    }
    if events >= 2 * WINDOW:
        out["first_100k_per_s"] = round(_window_rate(results, first=True), 1)
        out["last_100k_per_s"] = round(_window_rate(results, first=False), 1)
    return out


def _window_rate(results: List[Tuple[float, float, int]], first: bool) -> float:
    """Events/s over the first (or the last) 100k acknowledged events; ``results``
    are (sent, acknowledged, events) sorted by acknowledgement."""
    count = 0
    if first:
        start = results[0][0]
        for _sent, acked, n in results:
            count += n
            if count >= WINDOW:
                return count / max(acked - start, 1e-9)
    else:
        end = results[-1][1]
        for i in range(len(results) - 1, 0, -1):
            count += results[i][2]
            if count >= WINDOW:
                return count / max(end - results[i - 1][1], 1e-9)
    return 0.0


def _maybe(rate: Optional[float]) -> str:
    """A rate, or '-' where the run was shorter than two windows of 100k."""
    return "-" if rate is None else f"{rate:,.0f}"


def render(report: Dict[str, Any]) -> str:
    lines = [f"agg-bench: {report['config']}",
             f"disk fsync latency: p50 {report['fsync']['p50_ms']} ms, p99 {report['fsync']['p99_ms']} ms",
             f"seed demo (5,000 events, 20% duplicates, HTTP batches of 500): "
             f"{report['seed_demo_s'] * 1000:.0f} ms end to end", ""]
    head = (f"{'path':<12} {'events':>9} {'acked ev/s':>11} {'p50 ms':>7} {'p99 ms':>7} "
            f"{'half-load p50/p99 ms':>21} {'first 100k/s':>12} {'last 100k/s':>12} {'restart s':>9}")
    lines.append(head)
    lines.append("-" * len(head))
    for row in report["paths"]:
        f, h = row["full"], row["half_load"]
        lines.append(
            f"{row['path']:<12} {f['events']:>9,} {f['events_per_s']:>11,.0f} {f['p50_ms']:>7} "
            f"{f['p99_ms']:>7} {str(h.get('p50_ms')) + ' / ' + str(h.get('p99_ms')):>21} "
            f"{_maybe(f.get('first_100k_per_s')):>12} {_maybe(f.get('last_100k_per_s')):>12} "
            f"{row['restart_after_kill_s'] if row['restart_after_kill_s'] is not None else '-':>9}")
    lines.append("")
    lines.append("restart s: from SIGKILL of every agg process to ready again, on the data just written")
    lines.append("CPU µs per acknowledged event, at full load: " + "; ".join(
        f"{row['path']}: " + ", ".join(f"{k} {v}" for k, v in row["cpu_us_per_event"].items())
        for row in report["paths"]))
    lines.append("peak RSS, MiB: " + "; ".join(
        f"{row['path']}: " + ", ".join(f"{k} {v}" for k, v in row["peak_rss_mib"].items())
        for row in report["paths"]))
    extras = render_extras(report)
    return "\n".join(lines + ([""] + extras if extras else []))


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return round(a / b, 2) if a and b else None


def ratios(report: Dict[str, Any]) -> Dict[str, Optional[float]]:
    """The figures that compare across days: each a ratio of two measurements of this run."""
    rate = {row["path"]: row["full"]["events_per_s"] for row in report["paths"]}
    lone = report.get("lone", {})
    return {
        "http-single / bare-single": _ratio(rate.get("http-single"), rate.get("bare-single")),
        "zmq-batch / http-batch": _ratio(rate.get("zmq-batch"), rate.get("http-batch")),
        "seed publisher, agg / bare time": _ratio(lone.get("seed_publisher_agg_s"),
                                                  lone.get("seed_publisher_bare_s")),
    }


def render_extras(report: Dict[str, Any]) -> List[str]:
    lines: List[str] = []
    lone = report.get("lone", {})
    for name in ("agg", "bare"):
        ack = lone.get(f"ack_{name}")
        if ack:
            lines.append(f"one request at a time, {name}: p50 {ack['p50_ms']} ms, p99 {ack['p99_ms']} ms "
                         f"({ack['requests']} requests on one connection)")
    if "seed_publisher_agg_s" in lone:
        lines.append(f"the seed's sequential publisher: agg {lone['seed_publisher_agg_s']} s, "
                     f"bare app {lone['seed_publisher_bare_s']} s")
    for row in report.get("overload", []):
        lines.append(
            f"overload {row['transport']}: {row['offered_factor']}x of {row['capacity_events_per_s']:,} ev/s "
            f"for {row['seconds']:g} s: refusals p50/p99 {row['refused_p50_ms']} / {row['refused_p99_ms']} ms "
            f"({row['refused']} refused, {row['refused_without_retry_after']} without Retry-After), "
            f"admitted p50/p99 {row['admitted_p50_ms']} / {row['admitted_p99_ms']} ms, goodput "
            f"{row['goodput_events_per_s']:,} ev/s = {row['goodput_of_capacity']:.0%} of capacity, "
            f"lost {row['lost']}, other {row['other'] or 'none'}, peak RSS {row['peak_rss_mib']} MiB")
    for name, value in report.get("ratios", {}).items():
        lines.append(f"ratio {name}: {value if value is not None else '-'}")
    return lines
