"""The supervisor: start in order, restart the dead, give up on the flapping, stop cleanly."""

import contextlib
import glob
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import pytest

from conftest import AggSystem, hook_env, make_event, wait_until


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_every_process_with_status_0(agg_factory, signum) -> None:
    system: AggSystem = agg_factory()
    children = dict(system.endpoints["children"])
    assert set(children) == {"stats", "worker.0", "worker.1", "front", "ingest"}
    system.proc.send_signal(signum)
    assert system.proc.wait(30) == 0
    for pid in children.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not os.path.exists(os.path.join(system.run_dir, "endpoints.json"))
    log = system.log_text()
    assert "killing" not in log and "Traceback" not in log


def test_dead_child_is_restarted(agg: AggSystem) -> None:
    old = agg.child_pid("worker.1")
    wait_until(lambda: "worker.1 is ready" in agg.log_text(), message="READY in the log")
    time.sleep(1.0)  # READY for a second: the worker has run, so its death is no failed start
    os.kill(old, signal.SIGKILL)
    killed = time.monotonic()
    # The supervisor reports the death, so /health knows before stats.stale_after_s (3 s).
    status, _, body = wait_until(lambda: (lambda r: r if r[0] == 503 else None)(agg.get("/health")),
                                 5.0, interval=0.005, message="/health to see the death")
    assert body["missing"] == ["worker 1"]

    def restarted():
        stats = agg.stats()
        worker = stats["workers"]["1"]
        return stats if worker["alive"] and worker["pid"] != old else None
    stats = wait_until(restarted, 15, message="worker.1 restarted")
    took = time.monotonic() - killed
    assert stats["restarts"]["worker.1"] == 1
    # At once, with no backoff: well under a second here, 5 s allowed for a loaded machine.
    assert "worker.1 (pid %d) exited with status -9; restarting it" % old in agg.log_text()
    assert took < 5.0, took
    assert agg.post("/publish", {"topic": "t", "event_id": "1", "timestamp": "2025-10-21T14:30:00Z",
                                 "source": "s", "payload": {}})[0] == 200


def test_a_kill_storm_keeps_agg_healthy_most_of_the_time(agg_factory) -> None:
    """A child killed every 0.5-2 s: each is replaced at once, so /health is 200
    most of the time (60% and more in agg-bench's terms; half that here, for a
    loaded machine), and the supervisor never takes the kills for failed starts."""
    system: AggSystem = agg_factory()
    rng = random.Random(5)
    samples: list = []
    kills = 0
    end = time.monotonic() + 12
    next_kill = time.monotonic() + rng.uniform(0.5, 2.0)
    while time.monotonic() < end:
        if time.monotonic() >= next_kill:
            children = system.current_children()
            name = rng.choice(sorted(children))
            with contextlib.suppress(ProcessLookupError):
                os.kill(children[name], signal.SIGKILL)
                kills += 1
            next_kill = time.monotonic() + rng.uniform(0.5, 2.0)
        try:
            samples.append(system.get("/health")[0] == 200)
        except OSError:
            samples.append(False)  # the front itself was down
        time.sleep(0.05)  # the sampling period of the probe, not a synchronisation
    healthy = sum(samples) / len(samples)
    print(f"\nkill storm: {kills} kills, /health 200 in {healthy:.0%} of {len(samples)} samples")
    assert kills >= 5 and system.proc.poll() is None
    assert healthy >= 0.3, f"/health was 200 in only {healthy:.0%} of samples"
    wait_until(lambda: system.get("/health")[0] == 200, 30, message="healthy after the storm")


def test_gives_up_on_a_child_that_keeps_dying(agg_factory) -> None:
    system: AggSystem = agg_factory(supervisor_max_restarts=2)
    # Make worker 0's shards unreadable, then kill it: every restart fails.
    for path in glob.glob(os.path.join(system.data_dir, "shard-*")):
        partition = int(os.path.basename(path)[6:10])
        if partition % 2 == 0:
            with open(path, "r+b") as fh:
                fh.write(b"this is not a database" * 10)
    os.kill(system.child_pid("worker.0"), signal.SIGKILL)
    assert system.proc.wait(60) == 1
    log = system.log_text()
    assert "giving up" in log and "not a database" in log
    assert "Traceback" not in log


def test_second_agg_on_the_same_data_dir_is_refused(agg: AggSystem, tmp_base) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGG_")}
    out = subprocess.run([sys.executable, "-m", "agg", "run", "--data-dir", agg.data_dir,
                          "--run-dir", agg.run_dir, "--http-port", "0"],
                         capture_output=True, text=True, env=env, timeout=30, cwd=tmp_base)
    assert out.returncode == 2 and "already running" in out.stderr
    assert agg.get("/health")[0] == 200


def test_start_fails_clearly_when_the_http_port_is_taken(agg_factory) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        system = agg_factory(wait=False, http_port=taken.getsockname()[1])
        assert system.proc.wait(30) == 1
        log = system.log_text()
        assert "cannot bind" in log and "start-up failed" in log and "Traceback" not in log
    finally:
        taken.close()


def test_children_stop_when_the_supervisor_is_killed(agg: AggSystem) -> None:
    children = dict(agg.endpoints["children"])
    agg.proc.kill()
    agg.proc.wait(10)

    def all_gone():
        for pid in children.values():
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    if fh.read().split(")")[-1].split()[0] != "Z":
                        return False
            except OSError:
                pass
        return True
    wait_until(all_gone, 20, message="orphaned children to stop")


def test_a_restarted_edge_keeps_its_address(agg: AggSystem) -> None:
    url, ingest = agg.url, agg.ingest
    for name in ("front", "ingest"):
        os.kill(agg.child_pid(name), signal.SIGKILL)
    wait_until(lambda: (lambda c: c.get("front") != agg.child_pid("front")
                        and c.get("ingest") != agg.child_pid("ingest"))(agg.current_children()),
               20, message="front and ingest restarted")
    wait_until(lambda: agg.get("/health")[0] == 200, 20, message="front back on the same port")
    assert agg.read_endpoints()["http"] == url and agg.read_endpoints()["ingest"] == ingest
    from agg.client import Publisher
    with Publisher(ingest, ack_timeout=2) as pub:
        assert pub.publish([{"topic": "t", "event_id": "1", "timestamp": "2025-10-21T14:30:00Z",
                             "source": "s", "payload": {}}]).acknowledged == 1


@pytest.mark.parametrize("child", ["worker.0", "front"])
def test_a_hung_child_is_killed_and_restarted(agg_factory, child) -> None:
    # hang_s 3 rather than its least, 2: a child that works beats every second, also when
    # a loaded machine starves it for a moment.
    system: AggSystem = agg_factory(supervisor_hang_s=3)
    # Busy for longer than hang_s first: a child that works is not taken for hung.
    deadline = time.monotonic() + 4
    n = 0
    while time.monotonic() < deadline:
        batch = [make_event(topic=f"t{i % 7}", event_id=f"busy-{n}-{i}") for i in range(200)]
        assert system.post("/publish", {"events": batch})[0] == 200
        n += 1
    assert system.stats()["restarts"] == {name: 0 for name in system.current_children()}

    old = system.child_pid(child)
    os.kill(old, signal.SIGSTOP)  # alive, but its loop no longer turns
    wait_until(lambda: system.current_children().get(child) not in (None, old), 30,
               message=f"{child} replaced")
    assert f"{child} (pid {old}) has sent no sign of life" in system.log_text()
    wait_until(lambda: system.get("/health")[0] == 200, 30, message="healthy again")
    # The front reconnects to a restarted worker within moments; until then it says 503.
    wait_until(lambda: system.post("/publish", make_event(event_id="after"))[0] == 200, 10,
               message="publishing again")
    assert system.stats()["restarts"][child] == 1


SLOW_REBUILD = """\
# Test hook: a key index rebuild of a few rows takes seconds on any machine
# (a pause at each of its progress calls, made every 1,000 rows here).
import sys
import time

import agg.storage.keyindex as keyindex
import agg.storage.shard as shard

keyindex.PROGRESS_EVERY = 1000
shard.LOG_ROWS = 1000
bulk_load = keyindex.KeyIndex.bulk_load


def slow_bulk_load(self, rows, progress=lambda count: None):
    def slow(count):
        sys.stderr.write(f"test hook: rebuild at {count} rows\\n")
        time.sleep(0.2)
        progress(count)
    return bulk_load(self, rows, slow)


keyindex.KeyIndex.bulk_load = slow_bulk_load
"""


def test_a_worker_rebuilding_its_key_index_may_take_longer_than_ready_timeout(agg_factory, tmp_base) -> None:
    """A data directory as an older agg leaves it: rows, and no key index
    files. The rebuild is slowed by a hook to 40 pauses of 0.2 s, so that it
    outlasts supervisor.ready_timeout_s whatever the machine's speed; its
    beats keep the supervisor from taking it for hung."""
    from agg.partition import ensure_data_dir, shard_path
    from agg.storage.schema import SCHEMA
    data_dir = os.path.join(tmp_base, "data")
    ensure_data_dir(data_dir, 8)
    rows_per_shard = 5000
    for p in range(8):
        db = sqlite3.connect(shard_path(data_dir, p))
        db.executescript(SCHEMA)
        db.executemany("INSERT INTO events VALUES (?, 't', ?, 'ts', 's', x'7b7d', 'r')",
                       ((i, f"{p}-{i}") for i in range(1, rows_per_shard + 1)))
        db.commit()
        db.close()
    env = hook_env(tmp_base, SLOW_REBUILD)
    timeout = 4.0  # beats come every second; the other children must be READY within it too
    start = time.monotonic()
    system: AggSystem = agg_factory(workers=1, supervisor_ready_timeout_s=timeout, env=env)
    took = time.monotonic() - start
    with open(system.log_path) as fh:
        log = fh.read()
    assert "rows into the key index" in log and log.count("test hook: rebuild at") == 40
    assert took > 40 * 0.2 > timeout
    assert system.stats()["restarts"]["worker.0"] == 0
    # The rebuilt index knows the old rows.
    from agg.partition import partition_of
    p = partition_of("t", 8)
    status, _, body = system.post("/publish", make_event(topic="t", event_id=f"{p}-7"))
    assert status == 200 and body["duplicates"] == 1
