"""agg-publish as a user meets it: nobody answering, Ctrl-C, its own events
from a file, and its summary; real processes, real sockets, real signals."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from typing import Iterator, List, Tuple

import pytest
import zmq

from conftest import AggSystem, make_event, wait_until

PUBLISH = [sys.executable, "-m", "agg.tools.publish"]


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A TCP port bound but not listening: connections to it are refused, and no
    other process can take it while the test runs."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP port that accepts connections (the kernel's backlog) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield sock.getsockname()[1]
    sock.close()


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([*PUBLISH, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)


def first_stderr_line(proc: subprocess.Popen, timeout: float) -> Tuple[str, float]:
    """The first line the tool writes on stderr, and when (monotonic) it came."""
    assert proc.stderr is not None
    ready, _, _ = select.select([proc.stderr], [], [], timeout)
    assert ready, f"nothing on stderr within {timeout} s"
    return proc.stderr.readline(), time.monotonic()


def finish(proc: subprocess.Popen, timeout: float) -> Tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"agg-publish still running after {timeout} s") from None
    return proc.returncode, out, err


def test_zmq_to_nowhere_says_what_it_waits_for_and_stops_at_the_time_limit(refusing_port: int,
                                                                             tmp_base: str) -> None:
    for endpoint in (f"tcp://127.0.0.1:{refusing_port}", f"ipc://{tmp_base}/nobody.sock"):
        began = time.monotonic()
        proc = start("--transport", "zmq", "--endpoint", endpoint, "--time-limit", "3", "--events", "50")
        line, when = first_stderr_line(proc, 10)
        assert f"no answer from {endpoint} yet" in line and "--time-limit" in line, line
        assert when - began < 3.0, f"said after {when - began:.1f} s"  # Python's start included
        status, out, err = finish(proc, 10)
        assert status == 1
        assert time.monotonic() - began < 3 + 3.0
        assert "not acknowledged" in out and "time limit (3 s) passed" in out
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("agg-publish: 50 of 50 events not acknowledged"), err
        assert "Traceback" not in err


def test_zmq_to_a_peer_that_never_answers_says_so_and_stops_at_the_time_limit(tmp_base: str) -> None:
    """Connected, so every send succeeds, but no ack ever comes (an ingest stopped with SIGSTOP)."""
    silent = zmq.Context.instance().socket(zmq.ROUTER)
    silent.setsockopt(zmq.LINGER, 0)
    endpoint = f"ipc://{tmp_base}/silent.sock"
    silent.bind(endpoint)
    try:
        began = time.monotonic()
        proc = start("--transport", "zmq", "--endpoint", endpoint, "--time-limit", "3", "--timeout", "60",
                     "--events", "20", "--json")
        line, when = first_stderr_line(proc, 10)
        assert line.startswith(f"agg-publish: no answer from {endpoint} yet"), line
        assert when - began < 3.0
        status, out, _err = finish(proc, 10)
        assert status == 1 and time.monotonic() - began < 3 + 3.0
        assert json.loads(out)["failed"] == 20
        assert silent.poll(0), "the publisher did send"  # it was connected, not refused
    finally:
        silent.close()


def test_http_to_a_stopped_agg_says_it_once_and_stops_at_the_time_limit(refusing_port: int) -> None:
    url = f"http://127.0.0.1:{refusing_port}"
    began = time.monotonic()
    proc = start("--url", url, "--time-limit", "3", "--retries", "1000")
    status, out, err = finish(proc, 15)
    assert status == 1 and time.monotonic() - began < 3 + 3.0
    said = [line for line in err.splitlines() if "cannot connect" in line]
    assert said[0] == f"agg-publish: cannot connect to {url}: connection refused; " \
                      f"retrying for up to 3 s more (--time-limit)", err
    assert len(err.strip().splitlines()) == 2, err  # the notice, then the one-line error
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out  # one line for all the batches, not one per batch
    assert "Traceback" not in err


def test_a_request_left_unanswered_ends_at_the_time_limit_not_its_timeout(silent_port: int) -> None:
    began = time.monotonic()
    proc = start("--url", f"http://127.0.0.1:{silent_port}", "--time-limit", "2", "--timeout", "60",
                 "--events", "10", "--json")
    status, out, err = finish(proc, 20)
    assert status == 1 and time.monotonic() - began < 2 + 3.0, err
    summary = json.loads(out)
    assert summary["failed"] == 10 and summary["acknowledged"] == 0
    assert f"no answer from http://127.0.0.1:{silent_port}" in err


def interrupt_midway(system: AggSystem, args: List[str]) -> Tuple[int, dict, str]:
    """Start a long publish, Ctrl-C it once agg has some of its events."""
    proc = start(*args, "--json", "--events", "20000", "--duplicates", "0", "--batch-size", "50",
                 "--concurrency", "1", "--time-limit", "120")
    try:
        wait_until(lambda: system.stats()["received"] >= 500, 60, message="some events received")
        proc.send_signal(signal.SIGINT)
        status, out, err = finish(proc, 20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return status, json.loads(out), err


@pytest.mark.parametrize("transport", ["http", "zmq"])
def test_ctrl_c_gives_the_summary_so_far_and_status_130(agg: AggSystem, transport: str) -> None:
    target = ["--url", agg.url] if transport == "http" else ["--transport", "zmq", "--endpoint", agg.ingest]
    status, summary, err = interrupt_midway(agg, target)
    assert status == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert 0 < summary["acknowledged"] < 20000
    assert summary["acknowledged"] + summary["failed"] == 20000
    assert summary["errors"][-1].endswith("interrupted")
    assert err.strip().splitlines()[-1] == \
        f"agg-publish: interrupted: {summary['acknowledged']} of 20000 events acknowledged"


def test_publish_from_a_file_and_from_stdin(agg: AggSystem, tmp_base: str) -> None:
    path = os.path.join(tmp_base, "events.jsonl")
    with open(path, "w") as fh:
        for i in range(20):
            fh.write(json.dumps(make_event("file.topic", f"f{i}")) + "\n")
        fh.write("\n")  # a blank line is no event
    status, out, err = finish(start("--url", agg.url, "--from", path, "--json"), 60)
    assert status == 0, err
    assert json.loads(out)["stored"] == 20
    lines = "".join(json.dumps(make_event("stdin.topic", f"s{i}")) + "\n" for i in range(5))
    out2 = subprocess.run([*PUBLISH, "--url", agg.url, "--from", "-", "--json"], input=lines,
                          capture_output=True, text=True, timeout=60)
    assert out2.returncode == 0 and json.loads(out2.stdout)["stored"] == 5, out2.stderr
    agg.wait_stats(25, 25, 0)


def test_a_bad_line_is_one_error_naming_its_number(agg: AggSystem, tmp_base: str) -> None:
    path = os.path.join(tmp_base, "bad.jsonl")
    with open(path, "w") as fh:
        fh.write(json.dumps(make_event()) + "\n" + "{not json\n" + "[1]\n")
    status, out, err = finish(start("--url", agg.url, "--from", path), 30)
    assert status == 2 and out == ""
    assert err.startswith(f"agg-publish: --from {path}, line 2: not JSON") and err.count("\n") == 1, err
    assert agg.stats()["received"] == 0  # nothing sent when the input is bad
