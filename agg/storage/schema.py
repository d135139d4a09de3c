"""A shard's tables and the statements agg runs on them (SQLite)."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq         INTEGER PRIMARY KEY,
    topic       TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    timestamp   TEXT NOT NULL,
    source      TEXT NOT NULL,
    payload     BLOB NOT NULL,
    received_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_topic_seq ON events (topic, seq);
CREATE TABLE IF NOT EXISTS counters (
    topic             TEXT PRIMARY KEY,
    received          INTEGER NOT NULL,
    unique_processed  INTEGER NOT NULL,
    duplicate_dropped INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS probe (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL
);
"""

INSERT = ("INSERT INTO events (topic, event_id, timestamp, source, payload, received_at)"
          " VALUES (?, ?, ?, ?, ?, ?)")
# PERF: one statement of many rows costs 20-30% less per row than as many steps of
# executemany. The group's received_at is bound once, as ?1; 100 rows are 501 values,
# within SQLite's oldest limit (999).
ROWS_PER_INSERT = 100
INSERT_MANY = ("INSERT INTO events (topic, event_id, timestamp, source, payload, received_at) VALUES "
               + ", ".join(f"(?{2 + 5 * i}, ?{3 + 5 * i}, ?{4 + 5 * i}, ?{5 + 5 * i}, ?{6 + 5 * i}, ?1)"
                           for i in range(ROWS_PER_INSERT)))
LAST_ROW = "SELECT seq, received_at, topic, event_id FROM events ORDER BY seq DESC LIMIT 1"
LAST_INSERTED = "SELECT last_insert_rowid()"
COUNTERS = "SELECT topic, received, unique_processed, duplicate_dropped FROM counters"
KEYS_AFTER = "SELECT topic, event_id, seq FROM events WHERE seq > ? ORDER BY seq"
KEY_AT = "SELECT topic, event_id FROM events WHERE seq = ?"
# Rows fetched per query when the index's hits are checked (SQLite's old limit is 999).
KEYS_PER_QUERY = 500


def keys_of(count: int) -> str:
    """The keys of ``count`` rows, by seq."""
    return f"SELECT seq, topic, event_id FROM events WHERE seq IN ({','.join('?' * count)})"


# A write that keeps nothing: whether a failing shard can be written again.
PROBE = "INSERT OR REPLACE INTO probe (id, at) VALUES (1, ?)"
BUMP_COUNTERS = (
    "INSERT INTO counters (topic, received, unique_processed, duplicate_dropped) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (topic) DO UPDATE SET received = received + excluded.received,"
    " unique_processed = unique_processed + excluded.unique_processed,"
    " duplicate_dropped = duplicate_dropped + excluded.duplicate_dropped")
PAGE = ("SELECT seq, topic, event_id, timestamp, source, payload, received_at FROM events"
        " WHERE seq > ? ORDER BY seq LIMIT ?")
PAGE_OF_TOPIC = ("SELECT seq, topic, event_id, timestamp, source, payload, received_at FROM events"
                 " WHERE topic = ? AND seq > ? ORDER BY seq LIMIT ?")
