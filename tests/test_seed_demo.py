"""The seed's demo, end to end, with the real processes and the real publisher."""

import json
import subprocess
import sys

from conftest import AggSystem


def run_publisher(url: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "agg.tools.publish", "--url", url, "--json", *args],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr + out.stdout
    return json.loads(out.stdout)


def test_seed_demo_survives_restart_and_resend(agg_factory) -> None:
    system: AggSystem = agg_factory()
    status, _, body = system.get("/events")
    assert status == 200 and body["count"] == 0 and body["events"] == []
    system.wait_stats(0, 0, 0)

    first = run_publisher(system.url, "--events", "5000", "--duplicates", "0.2", "--seed", "7")
    assert first["acknowledged"] == 5000
    assert (first["stored"], first["duplicates"]) == (4000, 1000)
    stats = system.wait_stats(5000, 4000, 1000)
    assert stats["rejected"] == 0
    assert set(stats["topics"]) >= {"user.created", "order.placed", "payment.processed"}
    status, _, body = system.get("/events")
    assert status == 200 and body["count"] == 4000 == len(body["events"])
    keys = {(e["topic"], e["event_id"]) for e in body["events"]}
    assert len(keys) == 4000

    assert system.stop() == 0
    again: AggSystem = agg_factory()  # same data directory, new processes
    again.wait_stats(5000, 4000, 1000)
    second = run_publisher(again.url, "--events", "5000", "--duplicates", "0.2", "--seed", "7")
    assert (second["stored"], second["duplicates"]) == (0, 5000)
    again.wait_stats(10000, 4000, 6000)
    status, _, body = again.get("/events")
    assert body["count"] == 4000
