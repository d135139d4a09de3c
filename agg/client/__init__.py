"""Python clients of agg: publishers over ZeroMQ and HTTP, and the stats query.

``Publisher`` (blocking) and ``AsyncPublisher`` (asyncio) speak the native
ingest's protocol (see ``agg.protocol`` and the README); ``HttpPublisher``
POSTs to ``/publish`` from a few threads. All three cut events into batches,
keep up to ``max_inflight`` batches in flight, and resend a batch that was not
acknowledged within ``ack_timeout`` or that agg refused for a passing reason
(overload, a worker down), with the same backoff. Resending is safe: agg drops
the duplicates it creates. A batch refused as invalid is not resent; it is
reported, with agg's reasons. A ``time_limit`` ends the retries: what is not
acknowledged by then is reported as failed, and no request outlives it;
``on_trouble(reason)`` hears of every failed try as it happens. Ctrl-C raises
``Interrupted``, a ``KeyboardInterrupt`` holding what was acknowledged so far.

``query_stats(endpoint)`` asks the stats process directly, as ``agg-stats`` does.
``publish_request`` and ``read_response`` are the bytes of one keep-alive
POST /publish and the reading of its answer, for asyncio load generators.
"""

from .http import HttpPublisher, publish_request, read_response, tls_context
from .native import AsyncPublisher, Publisher, load_curve_options, server_key_of
from .session import TRANSIENT, Interrupted, PublishResult, Settings, backoff
from .stats import NotRunning, query_stats

__all__ = ["AsyncPublisher", "HttpPublisher", "Interrupted", "NotRunning", "PublishResult", "Publisher", "Settings",
           "TRANSIENT", "backoff", "load_curve_options", "publish_request", "query_stats",
           "read_response", "server_key_of", "tls_context"]
