"""The key index's file next to its shard (``shard-PPPP.sqlite3.keys``): its
format, and when it is written.

The file is a cache, never the truth: it holds the index of every row up to
a seq it names (and the hash of that row's key, to know it belongs to this
shard), so that opening a shard reads only the rows after it. Missing, torn,
from another shard or ahead of its shard, it is ignored and the index is
rebuilt from the rows (about 3.5 s per million).

Format: ``HEADER`` (magic, covered seq, hash of the covered row's key, key
count, bytes per seq, overflow pairs, crc32 of the body), then the sorted
hashes, their seqs, and the overflow's (hash, seq) pairs, little-endian.

Policy: saved again once ``storage.index_save_rows`` rows are not in it (a
start then reads at most that many rows per shard), sooner when the worker
is idle (a tenth of that), and at a clean close. A save runs on the worker's
background thread (at 10M events it writes 15 MB and fsyncs); a failed save
costs only a longer next start, and is tried again after as many rows.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import zlib
from typing import Callable, Optional, Tuple

import numpy as np

from .keyindex import KeyIndex, Snapshot

log = logging.getLogger("agg.storage")

MAGIC = b"aggkeys1"
HEADER = struct.Struct("<8sqqqBqI")

# Runs a job on the worker's background thread.
Later = Callable[[Callable[[], None]], None]


def write(path: str, snapshot: Snapshot, covered: int, covered_key: int) -> None:
    """Write ``snapshot`` of an index that holds every row up to seq ``covered``
    (whose key hashes to ``covered_key``) to ``path`` atomically."""
    hashes, seqs, extra = snapshot
    body = hashes.tobytes() + seqs.tobytes() + extra.tobytes()
    header = HEADER.pack(MAGIC, covered, covered_key, len(hashes), seqs.itemsize, len(extra), zlib.crc32(body))
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as fh:
            fh.write(header)
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):  # a half-written file only takes space
            os.unlink(tmp)
        raise


def read(path: str) -> Optional[Tuple[KeyIndex, int, int]]:
    """``(index, covered seq, hash of the covered row's key)`` from ``path``,
    or None if it is missing or not whole."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    if len(data) < HEADER.size:
        return None
    magic, covered, covered_key, keys, width, extra, crc = HEADER.unpack_from(data)
    body = data[HEADER.size:]
    if magic != MAGIC or width not in (4, 8) or len(body) != (8 + width) * keys + 16 * extra \
            or zlib.crc32(body) != crc:
        return None
    hashes = np.frombuffer(body, dtype=np.int64, count=keys).copy()
    seqs = np.frombuffer(body, dtype=np.uint32 if width == 4 else np.int64, count=keys,
                         offset=8 * keys).copy()
    pairs = np.frombuffer(body, dtype=np.int64, offset=(8 + width) * keys).reshape(-1, 2)
    return KeyIndex.from_arrays(hashes, seqs, pairs), covered, covered_key


class IndexFile:
    """The file of one shard's key index, and when to write it."""

    def __init__(self, path: str, save_rows: int, later: Optional[Later] = None) -> None:
        self.path = path
        self.save_rows = save_rows
        self.later = later  # the background thread, if the shard has one
        self.saved_at = 0   # the seq the last save (or try) covered

    def due(self, last_seq: int, idle: bool = False) -> bool:
        """Whether enough rows are not in the file to write it again."""
        rows = self.save_rows if not idle else max(1, self.save_rows // 10)
        return last_seq - self.saved_at >= rows

    def save(self, index: KeyIndex, covered: int, covered_key: int, now: bool = False) -> None:
        """Write ``index`` as of seq ``covered``: on the background thread if there
        is one, else (or if ``now``) here."""
        snapshot, path = index.snapshot(), self.path

        def save() -> None:
            try:
                write(path, snapshot, covered, covered_key)
            except OSError as exc:
                log.warning("cannot save the key index %s: %s", path, exc)
        if self.later is None or now:
            save()
        else:
            self.later(save)
        # After a failure too: the next try comes after as many rows, not at every commit.
        self.saved_at = covered
