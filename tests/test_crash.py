"""A worker killed with SIGKILL during a load loses nothing acknowledged."""

import json
import os
import signal
import subprocess
import sys

from agg.tools.publish import make_events
from conftest import AggSystem, wait_until


def test_worker_sigkill_during_load_leaves_exactly_the_unique_set(agg_factory) -> None:
    system: AggSystem = agg_factory(limits_ack_timeout_s=3)
    count, seed = 60000, 11
    publisher = subprocess.Popen(
        [sys.executable, "-m", "agg.tools.publish", "--url", system.url, "--json", "--events", str(count),
         "--seed", str(seed), "--batch-size", "100", "--concurrency", "4", "--max-backoff", "0.5",
         "--time-limit", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: system.stats()["received"] >= 5000, 60, message="load under way")
        victim = system.child_pid("worker.0")
        assert publisher.poll() is None, "the load ended before the kill; make it longer"
        os.kill(victim, signal.SIGKILL)
        out, err = publisher.communicate(timeout=180)
    finally:
        if publisher.poll() is None:
            publisher.kill()
            publisher.wait()
    assert publisher.returncode == 0, err + out
    summary = json.loads(out)
    assert summary["acknowledged"] == count and summary["retries"] > 0

    expected = {(e["topic"], e["event_id"]) for e in make_events(count, 0.2, seed)}
    wait_until(lambda: system.get("/health")[0] == 200, 30, message="worker restarted")
    stats = system.stats()
    assert stats["restarts"]["worker.0"] == 1
    assert stats["workers"]["0"]["pid"] != victim
    status, _, body = system.get("/events")
    stored = [(e["topic"], e["event_id"]) for e in body["events"]]
    assert len(stored) == len(set(stored)) == len(expected)
    assert set(stored) == expected
    stats = system.wait_stats(stats["received"], len(expected), stats["received"] - len(expected))
    # Resends after the kill may count as duplicates, never as new events.
    assert stats["received"] >= count
