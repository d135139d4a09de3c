"""How agg stops: a signal to the whole process group, SIGHUP, and a data
directory it cannot write, each with log lines and no traceback."""

import contextlib
import os
import signal
import site
import subprocess
import sys

import pytest

import agg
from conftest import AggSystem, cannot_run_here, http_request, make_event, topic_of_worker

QUIET = ("Traceback", "CancelledError", "exited with status", "restarting", "killing")


def assert_quiet(log: str) -> None:
    for words in QUIET:
        assert words not in log, f"{words!r} in the log:\n{log}"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_to_the_whole_process_group_stops_cleanly(agg_factory, signum) -> None:
    """What ``kill -- -PGID``, ``timeout``, systemd and a closed terminal send:
    every process gets the signal, then the supervisor's own SIGTERM; one stop."""
    system: AggSystem = agg_factory()
    assert system.post("/publish", make_event(event_id="g1"))[0] == 200
    # A keep-alive connection left open: the front must still stop gracefully.
    import http.client
    parsed = system.url.rsplit(":", 1)
    conn = http.client.HTTPConnection(parsed[0].split("//")[1], int(parsed[1]), timeout=10)
    conn.request("GET", "/health")
    conn.getresponse().read()
    os.killpg(system.proc.pid, signum)
    assert system.proc.wait(30) == 0
    conn.close()
    log = system.log_text()
    assert_quiet(log)
    assert f"{signal.Signals(signum).name}: stopping every process" in log
    assert "stopped with status 0" in log


def test_sighup_to_the_supervisor_is_a_logged_graceful_stop(agg_factory) -> None:
    system: AggSystem = agg_factory()
    system.proc.send_signal(signal.SIGHUP)
    assert system.proc.wait(30) == 0
    log = system.log_text()
    assert_quiet(log)
    assert "SIGHUP: stopping every process" in log
    # The data survive: a second start on the same directory serves the event.
    again = agg_factory(data_dir=system.data_dir)
    assert again.post("/publish", make_event(event_id="h1"))[0] == 200


def run_agg(data_dir: str, cwd: str, python: str = sys.executable, path: str = "",
            **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGG_")}
    if path:
        env["PYTHONPATH"] = path
    return subprocess.run([python, "-m", "agg", "run", "--data-dir", data_dir,
                           "--http-port", "0", "--ingest-endpoint", "tcp://127.0.0.1:0"],
                          capture_output=True, text=True, timeout=60, env=env, cwd=cwd, **kwargs)


def assert_one_line(out: subprocess.CompletedProcess, *words: str) -> None:
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    for w in words:
        assert w in lines[0], lines[0]


@contextlib.contextmanager
def read_only_mount(source: str, target: str):
    os.makedirs(target)
    if subprocess.run(["mount", "--bind", source, target], capture_output=True).returncode:
        cannot_run_here("cannot bind-mount here (needs root)")
    try:
        if subprocess.run(["mount", "-o", "remount,bind,ro", target], capture_output=True).returncode:
            cannot_run_here("cannot remount read-only here")
        yield target
    finally:
        subprocess.run(["umount", "-l", target], capture_output=True)


def test_a_data_dir_on_a_read_only_mount_is_one_line(agg_factory, tmp_base) -> None:
    """The data directory of an agg that has run, then mounted read-only."""
    system: AggSystem = agg_factory()
    assert system.stop() == 0
    with read_only_mount(system.data_dir, os.path.join(tmp_base, "ro")) as ro:
        out = run_agg(ro, tmp_base)
    assert_one_line(out, "data_dir", ro, "not writable", "Read-only file system")


def test_an_immutable_data_dir_is_one_line(tmp_base) -> None:
    """A directory nobody may write, root included (chattr +i)."""
    data = os.path.join(tmp_base, "frozen")
    os.makedirs(data)
    if subprocess.run(["chattr", "+i", data], capture_output=True).returncode:
        cannot_run_here("chattr +i is not possible here")
    try:
        out = run_agg(data, tmp_base)
    finally:
        subprocess.run(["chattr", "-i", data], capture_output=True)
    assert_one_line(out, "data_dir", data, "not writable", "Operation not permitted")


def test_a_data_dir_owned_by_another_user_is_one_line(tmp_base) -> None:
    """The Docker case: a volume owned by root, agg running as uid 1000."""
    if os.geteuid() != 0:
        cannot_run_here("needs root to run agg as another user")
    base = os.path.join(tmp_base, "other")
    data = os.path.join(base, "data")
    os.makedirs(data)
    os.chmod(tmp_base, 0o755)
    os.chmod(base, 0o755)
    os.chmod(data, 0o755)  # root's, not writable by others
    try:
        out = run_agg(data, base, user=65534, group=65534)
    except PermissionError:
        # This Python lives where other users cannot reach (pyenv's, under /root): the
        # system's of the same version, with this one's packages and this agg.
        # Not a want of root or chattr: where this machine keeps its Pythons and this
        # checkout, so a skip (said with its reason), not a CI failure.
        system_python = f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}"
        if not os.access(system_python, os.X_OK):
            pytest.skip(f"this Python is not executable by another user, and {system_python} is missing")
        path = os.pathsep.join([os.path.dirname(os.path.dirname(agg.__file__)), *site.getsitepackages()])
        probe = subprocess.run([system_python, "-c", "import agg.cli, falcon, msgspec, numpy, orjson, uvicorn, zmq"],
                               capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=path),
                               cwd=base, user=65534, group=65534)
        if probe.returncode:
            pytest.skip(f"another user cannot run this agg with {system_python}: {probe.stderr.strip()[-300:]}")
        out = run_agg(data, base, python=system_python, path=path, user=65534, group=65534)
    assert_one_line(out, "data_dir", data, "not writable", "Permission denied")


def test_children_take_a_terminal_s_sighup_and_sigint_as_nothing(agg: AggSystem) -> None:
    """A supervised child takes SIGHUP and SIGINT (from a terminal) as nothing:
    only the supervisor decides a stop."""
    pid = agg.child_pid("worker.0")
    os.kill(pid, signal.SIGHUP)
    os.kill(agg.child_pid("front"), signal.SIGHUP)
    os.kill(agg.child_pid("ingest"), signal.SIGINT)
    status, _, body = http_request(agg.url + "/health")
    assert status == 200, body
    assert agg.current_children()["worker.0"] == pid
    assert agg.post("/publish", make_event(topic=topic_of_worker(0), event_id="i1"))[0] == 200
    assert agg.current_children() == agg.endpoints["children"]


def test_a_worker_alone_on_an_immutable_data_dir_is_one_line(tmp_base) -> None:
    """``agg worker`` started alone (a container of the distributed compose file)."""
    data = os.path.join(tmp_base, "frozen-worker")
    os.makedirs(data)
    if subprocess.run(["chattr", "+i", data], capture_output=True).returncode:
        cannot_run_here("chattr +i is not possible here")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGG_")}
    try:
        out = subprocess.run([sys.executable, "-m", "agg", "worker", "--index", "0", "--data-dir", data],
                             capture_output=True, text=True, timeout=60, env=env, cwd=tmp_base)
    finally:
        subprocess.run(["chattr", "-i", data], capture_output=True)
    assert_one_line(out, "data_dir", data, "not writable", "Operation not permitted")
