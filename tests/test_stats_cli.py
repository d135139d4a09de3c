"""agg-stats as an operator meets it: topic names a publisher chose cannot act
on the terminal, --watch fits a real terminal (a pty), and the messages when
agg does not answer say what to do."""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from typing import Dict, List

from conftest import AggSystem, make_event, wait_until

STATS = [sys.executable, "-m", "agg.tools.statscli"]
EVIL = "evil\x1b]0;PWNED\x07\x1b[31mred\r\x9b2J\u202eright-to-left"
ESC_SHOWN = "evil\\x1b]0;PWNED\\x07\\x1b[31mred\\x0d\\x9b2J\\u202eright-to-left"
HOME = b"\x1b[H\x1b[2J"  # the tool's own screen control


def clean_env() -> Dict[str, str]:
    # COLUMNS and LINES would override the terminal's real size.
    return {k: v for k, v in os.environ.items()
            if not k.startswith("AGG_") and k not in ("COLUMNS", "LINES")}


def publish_topics(agg: AggSystem, topics: List[str]) -> None:
    events = [make_event(topic, f"e{i}") for i, topic in enumerate(topics)]
    assert agg.post("/publish", {"events": events})[0] == 200
    agg.wait_stats(len(events), len(events), 0)


def test_one_shot_table_shows_escape_sequences_instead_of_obeying_them(agg: AggSystem) -> None:
    publish_topics(agg, [EVIL, "plain.topic"])
    out = subprocess.run([*STATS, "--endpoint", agg.endpoints["stats"]], capture_output=True,
                         text=True, timeout=30, env=clean_env())
    assert out.returncode == 0, out.stderr
    assert ESC_SHOWN in out.stdout and "plain.topic" in out.stdout
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202e]", out.stdout), repr(out.stdout)
    # --json is for machines: the name as it was sent, escaped the JSON way.
    js = subprocess.run([*STATS, "--endpoint", agg.endpoints["stats"], "--json"], capture_output=True,
                        text=True, timeout=30, env=clean_env())
    assert "\\u001b]0;PWNED" in js.stdout and "\x1b" not in js.stdout


def run_in_pty(argv: List[str], rows: int, columns: int, timeout: float = 30.0) -> bytes:
    """Everything ``argv`` writes to a real terminal of ``rows`` x ``columns``."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=clean_env(),
                            start_new_session=True)
    os.close(slave)
    chunks: List[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child is gone and the terminal closed
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        assert proc.wait(timeout=max(1.0, deadline - time.monotonic())) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return b"".join(chunks)


def test_watch_in_a_real_terminal_escapes_names_and_fits_the_screen(agg: AggSystem) -> None:
    rows, columns = 20, 64
    # The busiest topics come first: the hostile names, then more than the screen holds.
    topics = [EVIL] * 4 + ["x" * 200] * 3 + ["\u5b57" * 80] * 2 + [f"topic.{i:02d}" for i in range(40)]
    publish_topics(agg, topics)
    raw = run_in_pty([*STATS, "--endpoint", agg.endpoints["stats"], "--watch", "--count", "2",
                      "--interval", "0.2"], rows, columns)
    assert raw.count(HOME) == 2, raw[:300]
    text = raw.replace(HOME, b"")
    assert b"\x1b" not in text and b"\x07" not in text and b"\xc2\x9b" not in text, text
    frames = raw.split(HOME)[1:]
    for frame in frames:
        lines = frame.decode().split("\r\n")  # the terminal's own line discipline adds the \r
        assert len(lines) - 1 <= rows - 1, lines  # the last split is after the last newline
        for line in lines:
            shown = sum(2 if "\u4e00" <= c <= "\u9fff" else 1 for c in line)
            assert shown <= columns, (shown, line)
    last = frames[-1].decode()
    assert "evil\\x1b]0;PWNED" in last and "more topics" in last
    assert re.search(r"x+~ +3 +3 +0\r\n", last)  # the long name cut, the counters still beside it
    assert "\u5b57~ " in last or "\u5b57 ~" in last


def test_ctrl_c_ends_watch_with_130_and_no_traceback(agg: AggSystem) -> None:
    proc = subprocess.Popen([*STATS, "--endpoint", agg.endpoints["stats"], "--watch", "--interval", "0.2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready and proc.stdout.readline() is not None  # a frame is being drawn
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130 and err == "", err


def test_messages_say_what_to_do(agg_factory, tmp_base: str) -> None:
    system: AggSystem = agg_factory(http_read_token="read-token-0123456789")
    other = os.path.join(tmp_base, "elsewhere")
    out = subprocess.run([*STATS, "--data-dir", other, "--timeout", "0.3"], capture_output=True,
                         text=True, timeout=30, env=clean_env())
    assert out.returncode == 1
    assert f"data dir {other}" in out.stderr and "--data-dir" in out.stderr and "--url" in out.stderr
    assert out.stderr.count("agg is not running") == 1

    denied = subprocess.run([*STATS, "--url", system.url], capture_output=True, text=True, timeout=30,
                            env=clean_env())
    assert denied.returncode == 1 and "not running" not in denied.stderr
    assert "401" in denied.stderr and "AGG_HTTP_READ_TOKEN" in denied.stderr and "--token" in denied.stderr
    allowed = subprocess.run([*STATS, "--url", system.url, "--token", "read-token-0123456789"],
                             capture_output=True, text=True, timeout=30, env=clean_env())
    assert allowed.returncode == 0 and "received" in allowed.stdout, allowed.stderr
    env = {**clean_env(), "AGG_HTTP_READ_TOKEN": "read-token-0123456789"}  # the server's variable
    assert subprocess.run([*STATS, "--url", system.url], capture_output=True, env=env,
                          timeout=30).returncode == 0

    url = system.url
    assert system.stop() == 0
    down = subprocess.run([*STATS, "--url", url], capture_output=True, text=True, timeout=30, env=clean_env())
    assert down.returncode == 1
    assert down.stderr == f"agg-stats: agg is not running at {url}: connection refused\n"
    watched = subprocess.run([*STATS, "--url", url, "--watch", "--count", "2", "--interval", "0.1"],
                             capture_output=True, text=True, timeout=30, env=clean_env())
    assert watched.returncode == 1 and watched.stdout.count("agg is not running") == 2


def test_help_is_its_own_and_plain_and_every_tool_has_a_version() -> None:
    out = subprocess.run([*STATS, "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "--data-dir" in out.stdout and "--watch" in out.stdout
    assert "--http-port" not in out.stdout and "--workers" not in out.stdout
    assert len(out.stdout.splitlines()) < 40
    for module, prog in (("agg.tools.statscli", "agg-stats"), ("agg.tools.publish", "agg-publish"),
                         ("agg.tools.bench", "agg-bench"), ("agg.tools.tail", "agg-tail")):
        helped = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True,
                                timeout=30)
        assert helped.returncode == 0 and "``" not in helped.stdout, (prog, helped.stdout)
        version = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True,
                                 text=True, timeout=30)
        assert version.returncode == 0 and re.fullmatch(rf"{prog} \(agg\) \d+\.\d+\.\d+\n", version.stdout)


def test_a_reader_that_goes_away_ends_the_tools_quietly(agg: AggSystem) -> None:
    """`agg-stats --json | head -1`: the reader closes the pipe before the tool writes."""
    publish_topics(agg, [f"t.{i}" for i in range(50)])
    for argv in ([*STATS, "--endpoint", agg.endpoints["stats"], "--json"],
                 [*STATS, "--endpoint", agg.endpoints["stats"], "--watch", "--count", "3", "--interval", "0.1"],
                 [sys.executable, "-m", "agg.tools.publish", "--url", agg.url, "--events", "10"],
                 [sys.executable, "-m", "agg.tools.tail", "--url", agg.url, "--from-start", "--count", "20"]):
        read, write = os.pipe()
        os.close(read)  # as head does once it has its line
        proc = subprocess.run(argv, stdout=write, stderr=subprocess.PIPE, text=True, timeout=60)
        os.close(write)
        assert proc.returncode == 141, (argv, proc.stderr)
        assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
        wait_until(lambda: agg.stats(), message="agg still fine")
