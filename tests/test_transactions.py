"""agg's own transaction boundaries under SIGKILL: a child process commits
large groups with ``Shard.store`` (the worker's commit path: classify, insert,
counters, key index, its file) and is killed at random moments, again and
again on the same file. Each group's events and counters are there whole or
not at all, every group the child saw committed is there, and the key index
read back after each kill still tells every stored key from a new one."""

from __future__ import annotations

import collections
import inspect
import random
import signal
import subprocess
import sys
import time
from typing import List, Set

from agg.protocol import Counts, Event
from agg.storage import Shard

GROUP = 2000      # events per group: 1500 new, 500 repeats
NEW = 1500
TOPICS = 3
ROUNDS = 12

CHILD = r'''
import sys
from agg.protocol import Event
from agg.storage import Shard
path, first = sys.argv[1], int(sys.argv[2])
# index_save_rows: the key index file is written every few groups, so kills land in saves too.
shard = Shard(path, index_save_rows=3000)
print("open", flush=True)
g = first
while True:
    shard.store([Event(*key, "2025-10-21T14:30:00Z", "s", b'{"pad": "%s"}' % (b"x" * 200))
                 for key in KEYS(g)], "now")
    print(g, flush=True)
    g += 1
'''


def keys(g: int) -> List[tuple]:
    """Group ``g``: 1,500 new keys, and 500 repeats (of the group before, or of itself)."""
    new = [(f"t{i % TOPICS}", f"g{g}-{i}") for i in range(NEW)]
    repeats = [(f"t{i % TOPICS}", f"g{max(g - 1, 0)}-{i}") for i in range(GROUP - NEW)]
    return new + repeats


def expected_counters(groups: Set[int]) -> dict:
    counters: dict = collections.defaultdict(Counts)
    for g in groups:
        new = set()
        for topic, event_id in keys(g):
            fresh = event_id.startswith(f"g{g}-") and (topic, event_id) not in new
            new.add((topic, event_id))
            counters[topic] += Counts(1, int(fresh), int(not fresh))
    return dict(counters)


def test_sigkill_at_random_points_of_group_commits_leaves_whole_groups(tmp_path) -> None:
    path = str(tmp_path / "shard.sqlite3")
    source = (f"from __future__ import annotations\nTOPICS, NEW, GROUP = {TOPICS}, {NEW}, {GROUP}\n"
              + inspect.getsource(keys)
              + CHILD.replace("KEYS(g)", "keys(g)"))
    rng = random.Random(20261202)
    acked: Set[int] = set()
    present: Set[int] = set()
    kills_in_flight = 0
    for _round in range(ROUNDS):
        first = max(present, default=-1) + 1
        child = subprocess.Popen([sys.executable, "-c", source, path, str(first)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == "open\n", child.stderr.read() if child.stderr else ""
            # Let it commit a few groups, then kill it at a random point of the next one:
            # a random share of the time a group took (the pause chooses the point, it waits on nothing).
            times = []
            for _ in range(rng.randint(2, 4)):
                line = child.stdout.readline()
                assert line.strip().isdigit(), child.stderr.read() if child.stderr else line
                acked.add(int(line))
                times.append(time.monotonic())
            time.sleep(rng.uniform(0, 1.2) * (times[-1] - times[-2]))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(30)
        assert child.returncode == -signal.SIGKILL
        rest = child.stdout.read() if child.stdout else ""
        acked.update(int(line) for line in rest.split())

        shard = Shard(path, index_save_rows=3000)
        try:
            stored = collections.Counter(
                int(event_id.split("-")[0][1:]) for _topic, event_id in
                shard.db.execute("SELECT topic, event_id FROM events"))
            assert all(n == NEW for n in stored.values()), f"a group stored in part: {stored}"
            present = set(stored)
            assert acked <= present, f"groups committed and lost: {sorted(acked - present)}"
            assert present <= set(range(max(acked) + 2)), "a group stored that was never sent"
            kills_in_flight += (max(present) > max(acked))
            assert shard.counters == expected_counters(present)
            assert shard.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            shard.close()
    print(f"\n{ROUNDS} kills, {len(present)} groups of {GROUP} stored, "
          f"{kills_in_flight} kills after a COMMIT and before its answer")

    # The key index read back after the last kill knows every stored key and none other.
    shard = Shard(path)
    try:
        last = max(present)
        probe = [Event(f"t{i % TOPICS}", f"g{last}-{i}", "2025-10-21T14:30:00Z", "s", b"{}") for i in range(50)]
        probe += [Event("t0", f"g{last + 1}-{i}", "2025-10-21T14:30:00Z", "s", b"{}") for i in range(50)]
        assert list(shard.store(probe, "later")) == [0] * 50 + [1] * 50
    finally:
        shard.close()


def test_a_group_whose_counters_cannot_be_written_stores_none_of_its_events(tmp_path) -> None:
    """The counters are in the group's transaction: a trigger that refuses
    their update fails the whole commit, its events included."""
    import pytest

    from agg.storage import StorageError

    path = str(tmp_path / "shard.sqlite3")
    shard = Shard(path)
    try:
        group = [Event("t", f"e{i}", "2025-10-21T14:30:00Z", "s", b"{}") for i in range(300)]
        shard.store(group[:100], "now")
        shard.db.execute("CREATE TRIGGER no_counters BEFORE UPDATE ON counters"
                         " BEGIN SELECT RAISE(ABORT, 'refused by the test'); END")
        with pytest.raises(StorageError, match="refused by the test"):
            shard.store(group, "now")
        assert shard.db.execute("SELECT count(*) FROM events").fetchone()[0] == 100
        assert shard.counters == {"t": Counts(100, 100, 0)}
        shard.db.execute("DROP TRIGGER no_counters")
        assert list(shard.store(group, "later")) == [0] * 100 + [1] * 200
        assert shard.counters == {"t": Counts(400, 300, 100)}
    finally:
        shard.close()
    reopened = Shard(path)
    try:
        assert reopened.counters == {"t": Counts(400, 300, 100)} and reopened.last_seq == 300
    finally:
        reopened.close()
