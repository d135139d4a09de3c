"""A fault for tests, loaded by Python at the start of every agg process whose
PYTHONPATH holds this directory: while the file named by AGG_TEST_FSYNC_FAILS
exists, an fsync of a SQLite WAL file fails with EIO, as on a failing disk.
Nothing else changes; agg's code is not touched."""

import errno
import os

_marker = os.environ.get("AGG_TEST_FSYNC_FAILS")
_fsync = os.fsync


def _failing_fsync(fd):
    if _marker and os.path.exists(_marker):
        try:
            target = os.readlink(f"/proc/self/fd/{fd if isinstance(fd, int) else fd.fileno()}")
        except OSError:
            target = ""
        if target.endswith("-wal"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
    return _fsync(fd)


os.fsync = _failing_fsync
