"""GET /metrics: Prometheus text exposition, made by prometheus_client.

Two sources. The system's counters come from the stats process's summary at
each scrape (a custom collector, so the figures are the same exact, durable
ones /stats shows); the front's own latency histogram and in-flight gauge live
in the front process.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class FrontMetrics:
    """The front's own instruments, in a registry of their own (not the global one)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.publish_seconds = Histogram(
            "agg_publish_duration_seconds", "Time from a POST /publish request to its answer",
            ["outcome"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))

    def render(self, summary: Dict[str, Any], inflight: List[int]) -> bytes:
        registry = CollectorRegistry()
        registry.register(_SummaryCollector(summary, inflight))
        return generate_latest(registry) + generate_latest(self.registry)


class _SummaryCollector:
    """Metric families from one stats summary (see agg.stats.Totals.summary)."""

    def __init__(self, summary: Dict[str, Any], inflight: List[int]) -> None:
        self.summary = summary
        self.inflight = inflight

    def collect(self) -> Iterator[Metric]:
        s = self.summary
        by_topic = s.get("topic_counts", {})
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
