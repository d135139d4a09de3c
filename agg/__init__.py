"""agg: an event aggregator with exact, durable dedup.

README.md describes the processes and what each module is: actors (``front``,
``ingest``, ``worker``, ``stats``, ``supervisor``), the libraries they share,
``storage``, and the ``tools`` that use agg from outside.
"""

__version__ = "0.1.0"
