"""agg-tail: a topic's events as they arrive, over GET /events and its cursor,
against a real agg; Ctrl-C and agg being away."""

from __future__ import annotations

import contextlib
import json
import select
import signal
import subprocess
import sys
from typing import Iterator, List, Tuple

from conftest import AggSystem, make_event

TAIL = [sys.executable, "-m", "agg.tools.tail"]


def publish(agg: AggSystem, topic: str, ids: List[str]) -> None:
    assert agg.post("/publish", {"events": [make_event(topic, i) for i in ids]})[0] == 200


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([*TAIL, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)


def wait_following(proc: subprocess.Popen, timeout: float = 20.0) -> str:
    """The tool's line saying it follows (after it has skipped to the end)."""
    assert proc.stderr is not None
    ready, _, _ = select.select([proc.stderr], [], [], timeout)
    assert ready, "agg-tail never said it follows"
    line = proc.stderr.readline()
    assert "agg-tail: following" in line, line
    return line


@contextlib.contextmanager
def running(*args: str) -> Iterator[subprocess.Popen]:
    """``start(*args)``, killed if the test leaves it still running (a failure)."""
    proc = start(*args)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def finish(proc: subprocess.Popen, timeout: float = 20.0) -> Tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("agg-tail did not stop") from None
    return proc.returncode, out, err


def test_tail_prints_only_new_events_of_its_topic_in_order(agg: AggSystem) -> None:
    publish(agg, "orders", [f"old{i}" for i in range(5)])
    agg.wait_stats(5, 5, 0)
    with running("orders", "--url", agg.url, "--count", "3", "--interval", "0.05") as proc:
        line = wait_following(proc)
        assert 'topic "orders"' in line and "new events" in line
        publish(agg, "other", ["x1", "x2"])
        publish(agg, "orders", ["new0", "new1", "new2", "new3"])
        status, out, err = finish(proc)
    assert status == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["event_id"] for e in events] == ["new0", "new1", "new2"]
    assert {e["topic"] for e in events} == {"orders"} and events[0]["payload"] == {"user_id": 123}


def test_tail_from_start_then_new_and_hostile_names_stay_escaped(agg: AggSystem) -> None:
    evil = "evil\x1b]0;PWNED\x07"
    publish(agg, evil, ["a", "b"])
    agg.wait_stats(2, 2, 0)
    with running("--url", agg.url, "--from-start", "--count", "3", "--interval", "0.05") as proc:
        assert "every topic" in wait_following(proc)
        publish(agg, evil, ["c"])
        status, out, err = finish(proc)
    assert status == 0, err
    assert "\x1b" not in out and "\\u001b]0;PWNED\\u0007" in out
    assert sorted(json.loads(line)["event_id"] for line in out.splitlines()) == ["a", "b", "c"]


def test_ctrl_c_ends_tail_quietly_with_130(agg: AggSystem) -> None:
    with running("orders", "--url", agg.url) as proc:
        wait_following(proc)
        proc.send_signal(signal.SIGINT)
        status, out, err = finish(proc)
    assert status == 130 and out == ""
    assert err == "", err


def test_tail_says_when_agg_is_away_or_wants_a_token(agg_factory) -> None:
    system: AggSystem = agg_factory(http_read_token="read-token-0123456789")
    denied = subprocess.run([*TAIL, "--url", system.url], capture_output=True, text=True, timeout=30)
    assert denied.returncode == 1 and "401" in denied.stderr and "--token" in denied.stderr
    url = system.url
    assert system.stop() == 0
    down = subprocess.run([*TAIL, "--url", url, "--from-start"], capture_output=True, text=True, timeout=30)
    assert down.returncode == 1
    assert down.stderr == f"agg-tail: agg is not running at {url}: connection refused\n"
