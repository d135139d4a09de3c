"""agg: an event aggregator with exact, durable dedup.

See README.md for the processes and ../DESIGN for the promises; each actor
lives in its own module (front, ingest, worker, stats, supervisor).
"""

__version__ = "0.1.0"
