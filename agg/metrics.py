"""GET /metrics: Prometheus text exposition, made by prometheus_client.

Three sources. The system's counters come from the stats process's summary
at each scrape (a custom collector, so the figures are the same exact,
durable ones /stats shows); the front's own latency histogram, in-flight
gauge and ``process_*`` metrics live in the front process; the CPU time and
memory of every agg process are read from ``/proc`` (``agg.procstats``).

Publishers choose topic names, so the ``topic`` label is bounded: the
``http.metrics_max_topics`` topics with the most events received get a series
each, the rest are summed under ``topic="__other__"``.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric

from . import __version__, procstats
from .config import Config

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OTHER_TOPICS = "__other__"


def bounded_topics(by_topic: Dict[str, Dict[str, int]], keep: int) -> Dict[str, Dict[str, int]]:
    """The ``keep`` topics with the most received (ties by name), and the rest summed."""
    if len(by_topic) <= keep:
        return by_topic
    ranked = sorted(by_topic, key=lambda t: (-by_topic[t]["received"], t))
    out = {t: by_topic[t] for t in ranked[:keep]}
    other: Dict[str, int] = {}
    for topic in ranked[keep:]:
        for key, n in by_topic[topic].items():
            other[key] = other.get(key, 0) + n
    out[OTHER_TOPICS] = other
    return out


class FrontMetrics:
    """The front's own instruments, in a registry of their own (not the global one)."""

    def __init__(self, config: Config) -> None:
        self.max_topics = config.http.metrics_max_topics
        self.run_dir = config.run_dir
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_* of the front itself
        self.publish_seconds = Histogram(
            "agg_publish_duration_seconds", "Time from a POST /publish request to its answer",
            ["outcome"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))

    def render(self, summary: Dict[str, Any], inflight: List[int]) -> bytes:
        registry = CollectorRegistry()
        registry.register(_SummaryCollector(summary, inflight, self.max_topics))
        registry.register(_ProcessesCollector(self.run_dir))
        return generate_latest(registry) + generate_latest(self.registry)


class _SummaryCollector:
    """Metric families from one stats summary (see agg.stats.Totals.summary)."""

    def __init__(self, summary: Dict[str, Any], inflight: List[int], max_topics: int) -> None:
        self.summary = summary
        self.inflight = inflight
        self.max_topics = max_topics

    def collect(self) -> Iterator[Metric]:
        s = self.summary
        yield InfoMetricFamily("agg_build", "The version of agg serving", value={"version": __version__})
        by_topic = bounded_topics(s.get("topic_counts", {}), self.max_topics)
        for name, key, doc in (
                ("agg_events_received", "received", "Events that reached a worker"),
                ("agg_events_unique", "unique_processed", "Events stored once"),
                ("agg_events_duplicate", "duplicate_dropped", "Events dropped as duplicates")):
            family = CounterMetricFamily(name, doc, labels=["topic"])
            for topic, counts in by_topic.items():
                family.add_metric([topic], counts[key])
            yield family
        workers = s.get("workers", {})
        for name, key, doc in (
                ("agg_worker_events_received", "received", "Events that reached each worker"),
                ("agg_worker_events_unique", "unique_processed", "Events each worker stored")):
            family = CounterMetricFamily(name, doc, labels=["worker"])
            for index, info in workers.items():
                family.add_metric([index], info.get(key, 0))
            yield family
        up = GaugeMetricFamily("agg_worker_up", "1 if the worker reported within stats.stale_after_s",
                               labels=["worker"])
        storage = GaugeMetricFamily("agg_worker_storage_error",
                                    "1 if the worker's last commit failed", labels=["worker"])
        for index, info in workers.items():
            up.add_metric([index], 1 if info["alive"] else 0)
            storage.add_metric([index], 1 if info.get("storage_error") else 0)
        yield up
        yield storage
        rejected = CounterMetricFamily("agg_rejected", "Requests refused as invalid or unauthorized",
                                       labels=["reason"])
        for reason, count in s.get("rejected_by_reason", {}).items():
            rejected.add_metric([reason], count)
        yield rejected
        restarts = CounterMetricFamily("agg_restarts", "Restarts of each process by the supervisor",
                                       labels=["process"])
        for process, count in s.get("restarts", {}).items():
            restarts.add_metric([process], count)
        yield restarts
        inflight = GaugeMetricFamily("agg_inflight_events",
                                     "Events this front sent to a worker and awaits", labels=["worker"])
        for index, count in enumerate(self.inflight):
            inflight.add_metric([str(index)], count)
        yield inflight
        yield GaugeMetricFamily("agg_uptime_seconds", "Seconds since agg started", value=s["uptime"])
        yield from _ingest_families(s.get("ingest") or {})


def _ingest_families(counted: Dict[str, int]) -> Iterator[Metric]:
    """The native ingest's batches and events acknowledged, and its refusals."""
    yield CounterMetricFamily("agg_ingest_batches", "Native batches acknowledged by the ingest",
                              value=counted.get("batches", 0))
    yield CounterMetricFamily("agg_ingest_events", "Events of native batches acknowledged",
                              value=counted.get("events", 0))
    refused = CounterMetricFamily("agg_ingest_refused", "Native batches refused, nothing acknowledged "
                                  "(resend after Retry-After)", labels=["code"])
    for code in ("overload", "unavailable"):
        refused.add_metric([code], counted.get("refused_" + code, 0))
    yield refused


class _ProcessesCollector:
    """CPU and memory of each agg process, and of them all (a rise in one is a leak to look at)."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir

    def collect(self) -> Iterator[Metric]:
        found = procstats.usage_by_process(self.run_dir)
        cpu = CounterMetricFamily("agg_process_cpu_seconds", "User and system CPU time of each agg "
                                  "process (this life of it)", labels=["process"])
        rss = GaugeMetricFamily("agg_process_resident_memory_bytes", "Resident memory of each agg process",
                                labels=["process"])
        for name, usage in sorted(found.items()):
            cpu.add_metric([name], usage.cpu_seconds)
            rss.add_metric([name], usage.rss_bytes)
        yield cpu
        yield rss
        yield GaugeMetricFamily("agg_resident_memory_bytes", "Resident memory of every agg process together",
                                value=sum(u.rss_bytes for u in found.values()))
        yield GaugeMetricFamily("agg_cpu_seconds", "CPU time of the agg processes running now, together",
                                value=sum(u.cpu_seconds for u in found.values()))
