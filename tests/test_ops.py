"""Operators' endpoints: /metrics, /openapi.json kept in step with the routes, /docs offline."""

import falcon.inspect

from agg import config as configmod
from agg import openapi
from agg.front import create_app
from conftest import AggSystem, http_request, make_event, topic_of_worker, wait_until


def test_openapi_describes_exactly_the_routes_of_the_app() -> None:
    config = configmod.defaults()
    app = create_app(config)
    routes = {}
    for route in falcon.inspect.inspect_routes(app):
        methods = {m.method.lower() for m in route.methods if m.internal is False}
        routes[route.path] = methods
    described = {path: set(ops) for path, ops in openapi.spec(config)["paths"].items()}
    assert described == routes


def test_metrics_openapi_and_docs_are_served(agg: AggSystem) -> None:
    assert agg.post("/publish", {"events": [make_event(event_id="m1"), make_event(event_id="m1")]})[0] == 200
    assert agg.post("/publish", raw=b"{")[0] == 422

    def scraped():
        status, headers, body = http_request(agg.url + "/metrics")
        text = body.decode() if isinstance(body, bytes) else str(body)
        return text if 'agg_rejected_total{reason="invalid_json"} 1.0' in text else None
    text = wait_until(scraped, message="the rejection in /metrics")
    assert 'agg_events_received_total{topic="user.created"} 2.0' in text
    assert 'agg_events_duplicate_total{topic="user.created"} 1.0' in text
    assert 'agg_worker_up{worker="0"} 1.0' in text
    assert 'agg_publish_duration_seconds_count{outcome="ok"} 1.0' in text
    assert 'agg_publish_duration_seconds_count{outcome="refused"} 1.0' in text

    status, _, spec = agg.get("/openapi.json")
    assert status == 200 and spec["openapi"].startswith("3.") and "/publish" in spec["paths"]
    status, headers, page = http_request(agg.url + "/docs")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"/docs/static/swagger-ui-bundle.js" in page and b"/openapi.json" in page
    status, headers, script = http_request(agg.url + "/docs/static/swagger-ui-bundle.js")
    assert status == 200 and len(script) > 100000  # the real bundle, from the installed package


def test_agg_stats_watch_draws_live_frames_and_says_when_agg_is_down(agg: AggSystem, tmp_base) -> None:
    import subprocess
    import sys
    assert agg.post("/publish", {"events": [make_event(event_id=f"w{i}") for i in range(10)]})[0] == 200
    agg.wait_stats(10, 10, 0)
    out = subprocess.run([sys.executable, "-m", "agg.tools.statscli", "--endpoint", agg.endpoints["stats"],
                          "--watch", "--count", "2", "--interval", "0.2"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    frames = out.stdout.strip().split("\n\nagg  up")
    assert len(frames) == 2
    assert "in 0/s" in frames[1]  # a rate, once there is a previous frame
    assert "user.created" in out.stdout and "up" in out.stdout
    down = subprocess.run([sys.executable, "-m", "agg.tools.statscli", "--endpoint", f"ipc://{tmp_base}/none.sock",
                           "--watch", "--count", "1", "--timeout", "0.2"],
                          capture_output=True, text=True, timeout=30)
    assert down.returncode == 1 and "agg is not running" in down.stdout
    once = subprocess.run([sys.executable, "-m", "agg.tools.statscli", "--endpoint", f"ipc://{tmp_base}/none.sock",
                           "--timeout", "0.2"], capture_output=True, text=True, timeout=30)
    assert once.returncode == 1 and "agg is not running" in once.stderr


def test_queue_depth_reaches_agg_stats_over_zeromq_from_every_edge(agg_factory) -> None:
    """Events sent to a worker and not yet acknowledged are counted per worker,
    by the front and the ingest alike, in the stats process's answer (what
    ``agg-stats --watch`` reads over ZeroMQ), and the count falls back to 0
    once the worker answers."""
    import concurrent.futures
    import os
    import signal

    from agg.client import Publisher, query_stats
    system: AggSystem = agg_factory(limits_stall_s=20, limits_ack_timeout_s=20)
    topic = topic_of_worker(1)

    def depth() -> list:
        return query_stats(system.endpoints["stats"])["inflight_events"]
    assert depth() == [0, 0]
    pid = system.child_pid("worker.1")
    os.kill(pid, signal.SIGSTOP)
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            over_http = pool.submit(system.post, "/publish",
                                    {"events": [make_event(topic=topic, event_id=f"h{i}") for i in range(30)]})
            with Publisher(system.ingest, batch_size=50, ack_timeout=30) as publisher:
                native = pool.submit(publisher.publish,
                                     [make_event(topic=topic, event_id=f"z{i}") for i in range(50)])
                wait_until(lambda: depth() == [0, 80], message="30 + 50 events in flight to worker 1")
                os.kill(pid, signal.SIGCONT)
                assert over_http.result(timeout=30)[0] == 200
                assert native.result(timeout=30).acknowledged == 50
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(lambda: depth() == [0, 0], message="nothing in flight once worker 1 answered")
    status, _, body = system.get("/stats")
    assert status == 200 and body["inflight_events"] == [0, 0]


def test_livez_answers_from_the_front_alone_and_readyz_follows_health(agg_factory) -> None:
    import os
    import signal
    system: AggSystem = agg_factory(stats_heartbeat_s=0.1, stats_stale_after_s=0.5,
                                    http_read_token="r", http_publish_token="p")
    status, _, body = system.get("/livez")
    assert (status, body) == (200, {"status": "alive", "pid": system.child_pid("front")})
    status, _, body = system.get("/readyz")
    assert status == 200 and body["status"] == "healthy" and set(body["workers"]) == {"0", "1"}
    pid = system.child_pid("worker.1")
    os.kill(pid, signal.SIGSTOP)
    try:
        def unready():
            status, _, body = system.get("/readyz")
            return body if status == 503 else None
        body = wait_until(unready, message="/readyz to say 503")
        assert body["status"] == "unhealthy" and body["missing"] == ["worker 1"]
        assert system.get("/health")[0] == 503
        assert system.get("/livez")[0] == 200  # the front answers: no reason to restart it
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(lambda: system.get("/readyz")[0] == 200, message="ready again")


def test_metrics_bound_the_topic_label_and_cover_processes_build_and_ingest(agg_factory) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from agg import __version__
    from agg.client import Publisher
    system: AggSystem = agg_factory(http_metrics_max_topics=3)
    # Topic i gets i + 1 events: t9, t8, t7 are the top three, the other seven are summed.
    events = [make_event(topic=f"t{i}", event_id=f"e{j}") for i in range(10) for j in range(i + 1)]
    assert system.post("/publish", {"events": events})[0] == 200
    with Publisher(system.ingest, batch_size=2) as publisher:
        assert publisher.publish([make_event(topic="t9", event_id=f"z{j}") for j in range(4)]).acknowledged == 4
    system.wait_stats(59, 59, 0)

    def scraped():
        text = http_request(system.url + "/metrics")[2].decode()
        return text if "agg_ingest_events_total 4.0" in text else None
    text = wait_until(scraped, message="the ingest's events in /metrics")
    families = {f.name: f for f in text_string_to_metric_families(text)}  # parses: valid text format
    received = {s.labels["topic"]: s.value for s in families["agg_events_received"].samples
                if s.name == "agg_events_received_total"}
    assert received == {"t9": 14.0, "t8": 9.0, "t7": 8.0, "__other__": float(sum(range(1, 8)))}
    assert f'agg_build_info{{version="{__version__}"}} 1.0' in text
    assert "agg_ingest_batches_total 2.0" in text
    assert 'agg_ingest_refused_total{code="overload"} 0.0' in text
    rss = {s.labels["process"]: s.value for s in families["agg_process_resident_memory_bytes"].samples}
    assert set(rss) == {"supervisor", "stats", "worker.0", "worker.1", "front", "ingest"}
    assert all(v > 1e6 for v in rss.values())
    total = families["agg_resident_memory_bytes"].samples[0].value
    assert total >= sum(rss.values()) * 0.5 and total > 6e6
    assert "process_resident_memory_bytes " in text and "process_cpu_seconds_total " in text  # the front's own
    for family in families.values():
        assert family.documentation, f"{family.name} has no HELP"


def test_json_log_format_gives_one_object_a_line_from_every_process(agg_factory) -> None:
    import json
    system: AggSystem = agg_factory(log_format="json")
    assert system.post("/publish", make_event(event_id="j1"))[0] == 200
    assert system.stop() == 0
    lines = system.log_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all(set(r) == {"time", "level", "role", "pid", "message"} for r in records)
    assert {r["role"] for r in records} == {"supervisor", "stats", "worker.0", "worker.1", "front", "ingest"}
    assert any(r["message"].startswith("agg is ready") for r in records)
    assert all(r["time"].endswith("Z") and r["level"] in ("debug", "info", "warning", "error") for r in records)
