"""agg-bench itself, on a tiny workload: it must keep running and counting
right as agg changes. No speed is asserted here (speed lives in the bench's
own figures, not in tests); only that every path acknowledges every event,
that the report has all its parts, and that the temporary data is removed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from agg.tools.bench.workload import make_event, timestamp_of, workload


def test_the_workload_is_deterministic_with_resends_and_varied_timestamps() -> None:
    events = list(workload(2000, 0.2, "random", 10, 5))
    assert events == list(workload(2000, 0.2, "random", 10, 5))
    keys = [(e["topic"], e["event_id"]) for e in events]
    assert 300 < len(keys) - len(set(keys)) < 500  # 20% resends of earlier events
    assert len({e["timestamp"] for e in events}) == len(set(keys))  # one per distinct event
    assert timestamp_of(0) == "2025-10-01T00:00:00Z" and make_event(3, "ordered", 10, 5)["event_id"].endswith("-5")
    # Split among load processes, the parts make up the whole.
    parts = [*workload(2000, 0.2, "random", 10, 5, 0, 2), *workload(2000, 0.2, "random", 10, 5, 1, 2)]
    assert sorted(map(json.dumps, parts)) == sorted(map(json.dumps, events))


def test_agg_bench_runs_every_path_and_counts_every_event(tmp_base) -> None:
    # tmp_base, not pytest's tmp_path: under xdist that is too deep for the ipc:// paths below it.
    out = subprocess.run(
        [sys.executable, "-m", "agg.tools.bench", "--events", "3000", "--single-events", "300",
         "--batch-size", "500", "--time-limit", "120", "--dir", tmp_base, "--json",
         "--ack-requests", "30", "--seed-events", "40", "--overload-s", "1"],
        capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["fsync"]["p50_ms"] > 0 and 0 < report["seed_demo_s"] < 60
    paths = {row["path"]: row for row in report["paths"]}
    assert set(paths) == {"http-single", "bare-single", "http-batch", "zmq-batch"}
    for name, row in paths.items():
        assert row["full"]["events"] == (300 if name.endswith("-single") else 3000)
        assert row["full"]["events_per_s"] > 0 and row["full"]["p99_ms"] >= row["full"]["p50_ms"]
        assert row["half_load"]["events_per_s"] > 0
        if name == "bare-single":
            assert set(row["peak_rss_mib"]) == {"bare"} and row["restart_after_kill_s"] is None
            continue
        assert row["restart_after_kill_s"] > 0
        assert {"worker.0", "worker.1", "front", "ingest", "stats"} <= set(row["peak_rss_mib"])
    # A lone publisher, on agg and on the bare app, and the ratios that compare across days.
    lone = report["lone"]
    assert lone["ack_agg"]["requests"] == lone["ack_bare"]["requests"] == 30
    assert lone["seed_publisher_agg_s"] > 0.04 and lone["seed_publisher_bare_s"] > 0.04  # 40 sleeps of 1 ms
    assert all(value is not None and value > 0 for value in report["ratios"].values()), report["ratios"]
    # Overload, both transports: every request answered, none lost, refusals carry Retry-After.
    assert [row["transport"] for row in report["overload"]] == ["http", "zmq"]
    for row in report["overload"]:
        assert row["acknowledged"] + row["refused"] == row["requests"], row
        assert row["lost"] == 0 and row["refused_without_retry_after"] == 0, row
        assert row["stats_unique"] >= row["acked_stored"], row  # a request failed late may be stored
    assert os.listdir(tmp_base) == []  # every temporary data directory removed
