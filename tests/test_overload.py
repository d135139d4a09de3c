"""Overload is said, not hidden: 503 fast, nothing acknowledged lost, memory bounded."""

import json
import os
import signal
import subprocess
import sys
import time

from agg.tools.publish import make_events
from conftest import AggSystem, RawClient, make_event, topic_of_worker, wait_until


def test_a_stopped_worker_gets_503_at_once_and_recovers(agg_factory) -> None:
    system: AggSystem = agg_factory(limits_retry_after_s=1, limits_stall_s=0.1)
    stopped, alive = topic_of_worker(0), topic_of_worker(1)
    pid = system.child_pid("worker.0")
    os.kill(pid, signal.SIGSTOP)
    try:
        timings = []
        for i in range(3):
            start = time.monotonic()
            status, headers, body = system.post("/publish", make_event(topic=stopped, event_id=f"s{i}"))
            timings.append(time.monotonic() - start)
            assert status == 503 and headers["retry-after"] == "1", body
        # The first waits out the stall detection (0.1 s); the next are refused at once.
        # The bounds are loose on purpose: the point is "not the 10 s ack timeout".
        assert timings[0] < 2.0 and max(timings[1:]) < 1.0, timings
        assert system.post("/publish", make_event(topic=alive, event_id="a"))[0] == 200
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(lambda: system.post("/publish", make_event(topic=stopped, event_id="late"))[0] == 200,
               10, message="worker 0 answering again")
    events = {e["event_id"] for e in system.get(f"/events?topic={stopped}")[2]["events"]}
    # Refused requests may have been committed after SIGCONT (resends dedup them): never lost.
    assert "late" in events


def test_a_stopped_worker_gets_an_error_frame_natively(agg_factory) -> None:
    from agg import protocol
    system: AggSystem = agg_factory(limits_stall_s=0.1)
    client = RawClient(system.ingest)
    pid = system.child_pid("worker.0")
    os.kill(pid, signal.SIGSTOP)
    try:
        for i in range(2):
            answer = client.ask(protocol.encode(protocol.BATCH, [i, [make_event(topic=topic_of_worker(0))]]), 2)
            assert answer is not None, "no answer while the worker is stopped"
            kind, (req_id, code, reason, _errors) = answer
            assert (kind, req_id, code) == (protocol.ERR, i, protocol.ERR_UNAVAILABLE)
            assert "worker 0" in reason and "retry" in reason
    finally:
        os.kill(pid, signal.SIGCONT)
        client.close()


def rss_mib(pids) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as fh:
                total += next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return total / 1024


def test_sustained_overload_is_refused_with_503_and_memory_stays_bounded(agg_factory) -> None:
    system: AggSystem = agg_factory(limits_max_inflight_events=2000, limits_retry_after_s=0)
    pids = [system.proc.pid, *system.endpoints["children"].values()]
    seeds = [31, 32, 33, 34]
    procs = [subprocess.Popen(
        [sys.executable, "-m", "agg.tools.publish", "--url", system.url, "--json", "--events", "20000",
         "--seed", str(seed), "--batch-size", "500", "--concurrency", "8", "--retries", "10000",
         "--max-backoff", "0.2", "--time-limit", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in seeds]
    peak = 0.0
    peaks = dict.fromkeys(pids, 0.0)
    while any(p.poll() is None for p in procs):
        peak = max(peak, rss_mib(pids))
        for pid in pids:
            peaks[pid] = max(peaks[pid], rss_mib([pid]))
        time.sleep(0.05)  # sampling interval of the RSS probe, not a synchronisation
    summaries = []
    for proc in procs:
        out, err = proc.communicate()
        assert proc.returncode == 0, err
        summaries.append(json.loads(out))
    assert sum(s["retries"] for s in summaries) > 0, "offered load never exceeded the in-flight bound"
    # The README's bound: under 200 MiB for each process (six of them, 512 MiB in all).
    assert max(peaks.values()) < 200 and peak < 512, (f"agg used {peak:.0f} MiB", peaks)
    expected = {(e["topic"], e["event_id"]) for seed in seeds for e in make_events(20000, 0.2, seed)}
    listing = system.get("/events")
    assert listing[0] == 200 and isinstance(listing[2], dict), (listing[0], listing[2][-300:], system.log_text())
    stored = [(e["topic"], e["event_id"]) for e in listing[2]["events"]]
    print(f"\noverload: {sum(s['retries'] for s in summaries)} refusals, peak RSS {peak:.0f} MiB, "
          f"{len(stored)} stored of {len(expected)} unique")
    assert len(stored) == len(set(stored)) and set(stored) == expected
    assert system.get("/health")[0] == 200
