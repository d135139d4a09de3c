"""A fault for tests, loaded by Python at the start of every agg process whose
PYTHONPATH holds this directory: while the file named by AGG_TEST_FSYNC_FAILS
exists, an fsync or fdatasync of a SQLite WAL file fails with EIO, as on a failing disk.
Nothing else changes; agg's code is not touched."""

import errno
import os

_marker = os.environ.get("AGG_TEST_FSYNC_FAILS")
_real = {"fsync": os.fsync, "fdatasync": os.fdatasync}


def _failing(name):
    def flush(fd):
        _check(fd)
        return _real[name](fd)
    return flush


def _check(fd):
    if _marker and os.path.exists(_marker):
        try:
            target = os.readlink(f"/proc/self/fd/{fd if isinstance(fd, int) else fd.fileno()}")
        except OSError:
            target = ""
        if target.endswith("-wal"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))


os.fsync = _failing("fsync")
os.fdatasync = _failing("fdatasync")
