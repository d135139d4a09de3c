"""Storage: each partition's SQLite shard with its in-memory key index, the index's
file, the background thread that keeps both off the commit path, and file locks.

``Shard`` is what a worker opens per partition; ``StorageError`` is what it
raises when a shard cannot be opened or a commit fails (``ShardInUse`` when
another process holds it), so that nothing above this package sees SQLite.
"""

from . import indexfile, keyindex, schema
from .shard import Shard, ShardInUse, StorageError

__all__ = ["Shard", "ShardInUse", "StorageError", "indexfile", "keyindex", "schema"]
