"""``agg ctl``: status, restart of one child and stop, over the supervisor's
control socket, against a real running agg; one-line errors otherwise."""

import os
import subprocess
import sys
from typing import List

from agg import protocol
from conftest import AggSystem, RawClient, make_event, topic_of_worker, wait_until


def ctl(system_or_dir, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    if isinstance(system_or_dir, AggSystem):
        where = ["--data-dir", system_or_dir.data_dir, "--run-dir", system_or_dir.run_dir]
    else:
        where = ["--data-dir", system_or_dir]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGG_")}
    return subprocess.run([sys.executable, "-m", "agg", "ctl", *args, *where],
                          capture_output=True, text=True, timeout=timeout, env=env)


def rows(out: str) -> List[List[str]]:
    return [line.split() for line in out.strip().splitlines()[1:]]


def test_status_shows_every_child_with_its_pid_uptime_restarts_and_state(agg: AggSystem) -> None:
    out = ctl(agg, "status")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].split() == ["name", "pid", "state", "uptime", "restarts"]
    table = {r[0]: r for r in rows(out.stdout)}
    assert set(table) == set(agg.endpoints["children"])
    for name, pid in agg.endpoints["children"].items():
        assert table[name][1:3] == [str(pid), "up"] and table[name][4] == "0"
        assert table[name][3].endswith("s")


def test_restart_replaces_one_child_and_counts_it(agg: AggSystem) -> None:
    old = agg.child_pid("worker.1")
    others = {n: p for n, p in agg.endpoints["children"].items() if n != "worker.1"}
    out = ctl(agg, "restart", "worker.1")
    assert out.returncode == 0, out.stderr
    new = agg.current_children()["worker.1"]
    assert out.stdout.strip() == f"worker.1 restarted: pid {old} -> {new}" and new != old
    assert {n: p for n, p in agg.current_children().items() if n != "worker.1"} == others
    table = {r[0]: r for r in rows(ctl(agg, "status").stdout)}
    assert table["worker.1"][1:3] == [str(new), "up"] and table["worker.1"][4] == "1"
    wait_until(lambda: agg.stats()["restarts"]["worker.1"] == 1, message="the restart in /stats")
    wait_until(lambda: agg.get("/health")[0] == 200, message="healthy again")
    # The edges take the new worker back within their stall window (a 503 meanwhile).
    wait_until(lambda: agg.post("/publish", make_event(topic=topic_of_worker(1), event_id="r1"))[0] == 200,
               message="a publish to the restarted worker")
    log = agg.log_text()
    assert "agg ctl: restarting worker.1" in log
    assert "exited with status" not in log and "Traceback" not in log


def test_stop_stops_agg_gracefully(agg: AggSystem) -> None:
    out = ctl(agg, "stop")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"agg (pid {agg.proc.pid}) stopped"
    assert agg.proc.wait(30) == 0
    log = agg.log_text()
    assert "agg ctl: stop requested" in log and "exited with status" not in log


def test_errors_are_one_line(agg: AggSystem, tmp_base) -> None:
    out = ctl(agg, "restart", "worker.9")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip() == ("agg ctl: no child named 'worker.9'; agg runs "
                                  "stats, worker.0, worker.1, front, ingest")
    elsewhere = os.path.join(tmp_base, "elsewhere")
    out = ctl(elsewhere, "status")
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1
    assert f"agg is not running with --data-dir {elsewhere}" in out.stderr and "--data-dir" in out.stderr
    out = ctl(agg, "restart")
    assert out.returncode == 2 and "restart needs the name of a child" in out.stderr


def test_a_bad_message_gets_an_error_and_the_supervisor_serves_on(agg: AggSystem) -> None:
    raw = RawClient(agg.endpoints.get("ctl") or f"ipc://{agg.run_dir}/ctl.sock")
    try:
        kind, body = raw.ask([b"agg1", protocol.CTL, b"\xc1"])
        assert kind == protocol.ERR and body[1] == protocol.ERR_INVALID
        kind, body = raw.ask(protocol.encode(protocol.CTL, [7, {"command": "dance"}]))
        assert kind == protocol.ERR and body[0] == 7 and "unknown command 'dance'" in body[2]
        kind, body = raw.ask([b"nope", protocol.CTL, protocol.pack([8, {}])])
        assert kind == protocol.ERR and body[0] == 8 and body[1] == protocol.ERR_VERSION
        ok, answer = raw.request(protocol.CTL, {"command": "status"})
        assert ok and [c["name"] for c in answer["children"]] == list(agg.endpoints["children"])
    finally:
        raw.close()
