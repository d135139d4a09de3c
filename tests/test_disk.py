"""A full disk: publishes get 503, /health says why, nothing acknowledged is lost,
and agg recovers by itself when space returns. Uses a small tmpfs (needs root)."""

import glob
import os
import subprocess
import time

import pytest

from conftest import AggSystem, cannot_run_here, make_event, wait_until


@pytest.fixture
def small_disk(tmp_base):
    path = os.path.join(tmp_base, "disk")
    os.makedirs(path)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", path],
                      capture_output=True).returncode != 0:
        cannot_run_here("cannot mount a tmpfs here (needs root)")
    yield path
    subprocess.run(["umount", "-l", path], capture_output=True)


def test_full_disk_says_503_and_recovers_without_loss(agg_factory, small_disk) -> None:
    system: AggSystem = agg_factory(data_dir=os.path.join(small_disk, "data"))
    acked, refused = [], None
    for b in range(400):
        batch = [make_event(topic=f"t{i % 5}", event_id=f"d-{b}-{i}", payload={"fill": "x" * 2000})
                 for i in range(100)]
        status, _, body = system.post("/publish", {"events": batch})
        if status == 503:
            refused = (batch, body)
            break
        assert status == 200, body
        acked += [(e["topic"], e["event_id"]) for e in batch]
    assert refused is not None, "the disk never filled"
    batch, body = refused
    assert "storage error" in body["description"] and "full" in body["description"]
    status, _, health = wait_until(lambda: (lambda r: r if r[0] == 503 else None)(system.get("/health")),
                                   message="/health to report the disk")
    assert any("full" in reason for reason in health["storage_errors"].values())

    subprocess.run(["mount", "-o", "remount,size=64m", small_disk], check=True)
    freed = time.monotonic()
    # Health follows the truth with no traffic: the worker tries its failing shards when idle.
    wait_until(lambda: system.get("/health")[0] == 200, 10, message="healthy again, with no publish")
    healthy = time.monotonic() - freed
    wait_until(lambda: system.post("/publish", {"events": batch})[0] == 200, 10, message="writes again")
    acked += [(e["topic"], e["event_id"]) for e in batch]
    stored = [(e["topic"], e["event_id"]) for e in system.get("/events")[2]["events"]]
    print(f"\ndisk full after {len(acked) - len(batch)} events; /health 200 {healthy:.2f} s after space "
          f"returned; {len(stored)} stored after recovery")
    assert len(stored) == len(set(stored)) and set(stored) == set(acked)
    stats = system.stats()
    assert stats["received"] == stats["unique_processed"] + stats["duplicate_dropped"]
    assert stats["restarts"]["worker.0"] == 0 and stats["restarts"]["worker.1"] == 0



def test_unwritable_shards_say_503_and_recover_without_loss(agg_factory) -> None:
    system: AggSystem = agg_factory()
    first = [make_event(topic=f"t{i % 5}", event_id=f"ro-a-{i}") for i in range(200)]
    assert system.post("/publish", {"events": first})[0] == 200
    # The immutable flag refuses write() even to root, even on files already open:
    # what a filesystem turned read-only under a running agg looks like to SQLite.
    # Not on the -shm files: SQLite writes those through a shared mapping, whose
    # pages a read-only remount leaves writable, and which an immutable file faults.
    files = sorted(f for f in glob.glob(os.path.join(system.data_dir, "shard-*"))
                   if not f.endswith("-shm"))
    if subprocess.run(["chattr", "+i", *files], capture_output=True).returncode != 0:
        cannot_run_here("chattr +i is not available here")
    try:
        batch = [make_event(topic=f"t{i % 5}", event_id=f"ro-b-{i}") for i in range(200)]
        status, _, body = system.post("/publish", {"events": batch})
        assert status == 503 and "storage error" in body["description"], body
        status, _, health = wait_until(lambda: (lambda r: r if r[0] == 503 else None)(system.get("/health")),
                                       message="/health to report the disk")
        assert health["storage_errors"]
    finally:
        subprocess.run(["chattr", "-i", *files], check=True)
    wait_until(lambda: system.get("/health")[0] == 200, 10, message="healthy again, with no publish")
    wait_until(lambda: system.post("/publish", {"events": batch})[0] == 200, 10, message="writes again")
    stored = [(e["topic"], e["event_id"]) for e in system.get("/events")[2]["events"]]
    assert len(stored) == len(set(stored))
    assert set(stored) == {(e["topic"], e["event_id"]) for e in first + batch}
    stats = system.stats()
    assert stats["received"] == stats["unique_processed"] + stats["duplicate_dropped"]
