"""The in-memory dedup index of one shard: which ``(topic, event_id)`` it holds,
and in which row.

Why it exists: with a unique SQLite index on ``(topic, event_id)``, every
random event id dirties a random index page, each commit writes those pages
to the WAL (about one 4 KiB page per event), and as a shard grows past its
page cache the inserts slow down. With this index in memory, the shard's
table is append-only, and a commit writes little more than its rows.

How: each key is a 64-bit hash mapped to the seq of its row. Most of them sit
in two sorted numpy arrays (12 bytes per key: seqs take 4 bytes until a shard
passes 2**32 rows); the keys added since the last merge sit in a dict of at
most ``RECENT_MAX`` entries (about 1.6 MiB). A hash is only a hint:
the shard reads the row behind a hit and compares the key, so two keys with
the same hash never make a new event a duplicate. The later of two such keys
goes to ``overflow``.

Restart: ``agg.storage.indexfile`` writes the arrays (``snapshot``) to a
file with the seq they cover, and reads them back, so that opening a shard
scans only the rows after that seq.
"""

from __future__ import annotations

import hashlib
import itertools
from typing import Any, Callable, Dict, Iterable, Iterator, List, Tuple

import numpy as np

# Keys added since the last merge, kept in a dict (~100 bytes each) before they
# join the sorted arrays; a merge copies the arrays, so not after every commit.
RECENT_MAX = 16384
UINT32_MAX = 2**32 - 1
PROGRESS_EVERY = 100_000  # rows between two calls of bulk_load's progress (~0.35 s)
# A key index as saved: hashes, seqs, and the overflow's (hash, seq) pairs.
Snapshot = Tuple[np.ndarray, np.ndarray, np.ndarray]
# PERF: up to this many keys, looking them up one by one beats numpy's per-call cost.
FEW = 4


def key_hashes(keys: Iterable[Tuple[str, str]]) -> np.ndarray:
    """A stable 64-bit hash of each key ``(topic, event_id)``, the same in
    every process and run. One C call per key and one array for all: the
    digests are joined rather than each turned into a Python int."""
    blake2b = hashlib.blake2b
    digests = b"".join([blake2b(f"{topic}\x00{event_id}".encode("utf-8", "surrogatepass"),
                                digest_size=8).digest() for topic, event_id in keys])
    return np.frombuffer(digests, dtype="<i8")


def key_hash(topic: str, event_id: str) -> int:
    """The hash of one key (see ``key_hashes``)."""
    return int(key_hashes([(topic, event_id)])[0])


def _found_in(table: Dict[int, Any], wanted: List[int]) -> Iterator[Tuple[int, int]]:
    """(position, hash) of each of ``wanted`` that is a key of ``table``: one set
    intersection in C, and a pass in Python only if it found any."""
    common = table.keys() & wanted if table else ()
    return ((i, h) for i, h in enumerate(wanted) if h in common) if common else iter(())


def narrow(seqs: np.ndarray) -> np.ndarray:
    """``seqs`` as 4-byte integers if they all fit, else as 8-byte ones."""
    if not len(seqs) or int(seqs.max()) <= UINT32_MAX:
        return seqs.astype(np.uint32, copy=False)
    return seqs.astype(np.int64, copy=False)


class KeyIndex:
    """hash -> seq of every key of a shard; see the module's docstring."""

    def __init__(self) -> None:
        self.hashes = np.empty(0, dtype=np.int64)  # sorted, no repeats
        self.seqs: np.ndarray = np.empty(0, dtype=np.uint32)  # seqs[i]: the row of hashes[i]
        self.recent: Dict[int, int] = {}           # not yet merged; none of these is in hashes
        self.overflow: Dict[int, List[int]] = {}   # more rows whose key has an indexed hash

    def __len__(self) -> int:
        return len(self.hashes) + len(self.recent) + sum(len(v) for v in self.overflow.values())

    def candidates(self, hashes: np.ndarray) -> Dict[int, List[int]]:
        """The positions in ``hashes`` of the hashes this index holds, each with
        the seqs of the rows whose key has that hash: the key at that position
        is stored iff one of those rows holds it. Most of a group is new, so
        the work is in C (set intersections, one searchsorted) but for the hits."""
        hits: Dict[int, List[int]] = {}
        wanted = hashes.tolist()
        for i, h in _found_in(self.recent, wanted):
            hits[i] = [self.recent[h]]
        if len(self.hashes) and len(wanted) <= FEW:
            arr = self.hashes
            for i, h in enumerate(wanted):
                found = int(arr.searchsorted(h))
                if found < len(arr) and int(arr[found]) == h:
                    hits[i] = [int(self.seqs[found])]
        elif len(self.hashes):
            at = np.minimum(np.searchsorted(self.hashes, hashes), len(self.hashes) - 1)
            for i in np.flatnonzero(self.hashes[at] == hashes).tolist():
                hits[i] = [int(self.seqs[at[i]])]
        for i, h in _found_in(self.overflow, wanted):
            hits[i] = hits.get(i, []) + self.overflow[h]
        return hits

    def add(self, fresh: Iterable[Tuple[int, int]], collided: Iterable[Tuple[int, int]] = ()) -> None:
        """Index committed rows, as ``(hash, seq)`` pairs: ``fresh`` ones, whose
        hash is not indexed yet, and ``collided`` ones, whose hash is (for
        another key, as the shard checked)."""
        recent = self.recent
        recent.update(fresh)
        for h, seq in collided:
            self.overflow.setdefault(h, []).append(seq)
        if len(recent) >= RECENT_MAX:
            self.merge()

    def merge(self) -> None:
        """Move the recent keys into the sorted arrays."""
        if not self.recent:
            return
        count = len(self.recent)
        hashes = np.fromiter(self.recent.keys(), dtype=np.int64, count=count)
        seqs = np.fromiter(self.recent.values(), dtype=np.int64, count=count)
        order = np.argsort(hashes)
        hashes, seqs = hashes[order], seqs[order]
        at = np.searchsorted(self.hashes, hashes)
        self.hashes = np.insert(self.hashes, at, hashes)
        if self.seqs.dtype == np.int64 or int(seqs.max()) > UINT32_MAX:
            self.seqs = np.insert(self.seqs.astype(np.int64, copy=False), at, seqs)
        else:
            self.seqs = np.insert(self.seqs, at, seqs.astype(np.uint32))
        self.recent = {}

    def bulk_load(self, rows: Iterable[Tuple[str, str, int]],
                  progress: Callable[[int], None] = lambda count: None) -> None:
        """Index stored rows, ``(topic, event_id, seq)`` in seq order, all of
        them distinct keys: the rebuild at open, sorted in one go. ``progress``
        hears the count every ``PROGRESS_EVERY`` rows (a long rebuild is not a hang)."""
        rows = iter(rows)
        hash_parts: List[np.ndarray] = []  # 16 bytes a row in all, never a tuple per row
        seq_parts: List[np.ndarray] = []
        count = 0
        while True:
            chunk = list(itertools.islice(rows, PROGRESS_EVERY))
            if not chunk:
                break
            hash_parts.append(key_hashes((topic, event_id) for topic, event_id, _seq in chunk))
            seq_parts.append(np.fromiter((seq for _topic, _event_id, seq in chunk), dtype=np.int64,
                                         count=len(chunk)))
            count += len(chunk)
            del chunk
            progress(count)
        if not count:
            return
        self.merge()
        hashes = np.concatenate([self.hashes] + hash_parts)
        seqs = np.concatenate([self.seqs.astype(np.int64)] + seq_parts)
        del hash_parts, seq_parts
        order = np.argsort(hashes, kind="stable")  # stable: of equal hashes, the oldest row first
        hashes, seqs = hashes[order], seqs[order]
        repeat = np.flatnonzero(hashes[1:] == hashes[:-1]) + 1
        for i in repeat.tolist():
            self.overflow.setdefault(int(hashes[i]), []).append(int(seqs[i]))
        self.hashes = np.delete(hashes, repeat)
        self.seqs = narrow(np.delete(seqs, repeat))

    def snapshot(self) -> "Snapshot":
        """The index as it is now, to be written by ``write``. Its arrays are
        never written in place (a merge makes new ones), so another thread may
        write them out while this index goes on taking keys."""
        self.merge()
        extra = np.array([(h, s) for h, seqs in self.overflow.items() for s in seqs],
                         dtype=np.int64).reshape(-1, 2)
        return self.hashes, self.seqs, extra

    @classmethod
    def from_arrays(cls, hashes: np.ndarray, seqs: np.ndarray, extra: np.ndarray) -> "KeyIndex":
        """An index of sorted ``hashes`` and their ``seqs``, and the overflow's pairs ``extra``."""
        index = cls()
        index.hashes, index.seqs = hashes, seqs
        for h, s in extra.tolist():
            index.overflow.setdefault(h, []).append(s)
        return index
