"""The HTTP contract, against a real running agg."""

import asyncio
import concurrent.futures
import contextlib
import http.client
import json
import os
import signal
import socket
from typing import Any, Callable, Iterator

import pytest

from agg.client import publish_request, read_response
from conftest import AggSystem, http_request, make_event, topic_of_worker, wait_until


def events_of(system: AggSystem, query: str = ""):
    status, _, body = system.get("/events" + query)
    assert status == 200, body
    assert body["count"] == len(body["events"])
    return body["events"]


def test_single_event_and_batch_answers_keep_the_seed_shape(agg: AggSystem) -> None:
    status, _, body = agg.post("/publish", make_event())
    assert status == 200
    assert body == {"status": "accepted", "received": 1, "queued": 1, "stored": 1, "duplicates": 0}
    status, _, body = agg.post("/publish", {"events": [make_event(event_id="a"), make_event(event_id="b")]})
    assert status == 200 and body["received"] == 2 and body["stored"] == 2
    (first, *_rest) = events_of(agg)
    assert set(first) == {"topic", "event_id", "timestamp", "source", "payload", "received_at"}
    assert first["payload"] == {"user_id": 123}
    status, _, health = agg.get("/health")
    assert status == 200 and health["status"] == "healthy"


def test_duplicates_within_a_batch_across_requests_and_topics(agg: AggSystem) -> None:
    batch = [make_event(event_id="x"), make_event(event_id="x"), make_event(event_id="y")]
    status, _, body = agg.post("/publish", {"events": batch})
    assert (status, body["stored"], body["duplicates"]) == (200, 2, 1)
    status, _, body = agg.post("/publish", {"events": batch})
    assert (body["stored"], body["duplicates"]) == (0, 3)
    # The same id in another topic is another event.
    status, _, body = agg.post("/publish", make_event(topic="order.placed", event_id="x"))
    assert (body["stored"], body["duplicates"]) == (1, 0)
    stats = agg.wait_stats(received=7, unique=3, duplicates=4)
    assert stats["topic_counts"]["user.created"] == {
        "received": 6, "unique_processed": 2, "duplicate_dropped": 4}
    stored = {(e["topic"], e["event_id"]) for e in events_of(agg)}
    assert stored == {("user.created", "x"), ("user.created", "y"), ("order.placed", "x")}
    assert [e["event_id"] for e in events_of(agg, "?topic=order.placed")] == ["x"]


def post_all_at_once(url: str, bodies: list) -> list:
    """POST every body on its own connection, all written before any answer is
    read. The answers, in order."""
    host, port = url.split("//")[1].rsplit(":", 1)

    async def run() -> list:
        conns = [await asyncio.open_connection(host, int(port)) for _ in bodies]
        for (_reader, writer), body in zip(conns, bodies):
            writer.write(publish_request(json.dumps(body).encode()))
        answers = []
        for reader, writer in conns:
            head, answer = await read_response(reader)
            answers.append((head.split(b" ")[1], json.loads(answer)))
            writer.close()
        return answers
    return asyncio.run(run())


def test_requests_answered_together_each_get_their_own_statuses(agg: AggSystem) -> None:
    """Requests in flight together, over several partitions and both workers,
    are each told about their own events: new ones stored, resent ones
    duplicates. (How one message's answer is shared out: test_dispatch.)"""
    agg.post("/publish", {"events": [make_event(event_id=f"old-{i}") for i in range(40)]})
    bodies: list = []
    expected = []
    for i in range(40):
        if i % 4 == 0:  # a batch: 2 resent, i % 3 + 1 new, over two topics
            new = [make_event(topic=f"t{j % 2}", event_id=f"new-{i}-{j}") for j in range(i % 3 + 1)]
            bodies.append({"events": [make_event(event_id=f"old-{i}"), *new, make_event(event_id=f"old-{i + 1}")]})
            expected.append((len(new), 2))
        elif i % 2:
            bodies.append(make_event(event_id=f"old-{i}"))
            expected.append((0, 1))
        else:
            bodies.append(make_event(topic=f"t{i % 3}", event_id=f"new-{i}"))
            expected.append((1, 0))
    answers = post_all_at_once(agg.url, bodies)
    assert [code for code, _ in answers] == [b"200"] * len(bodies)
    assert [(a["stored"], a["duplicates"]) for _, a in answers] == expected


def test_stats_count_an_acknowledged_event_at_once(agg: AggSystem) -> None:
    """A worker sends its counters before it answers, and the stats process
    reads every snapshot waiting before it answers a query: /stats asked after
    an acknowledgement counts that event, with no wait."""
    for i in range(30):
        assert agg.post("/publish", make_event(event_id=f"now-{i % 20}"))[0] == 200
        stats = agg.stats()
        assert stats["received"] == i + 1 and stats["duplicate_dropped"] == max(0, i + 1 - 20)


@pytest.mark.parametrize("body, field, words", [
    ({"events": [make_event(), make_event(timestamp="2025-10-21T14:30:00")]}, "timestamp", "with a time zone"),
    ({"events": [make_event(), make_event(payload="text")]}, "payload", "object"),
    ({"events": [make_event(), {k: v for k, v in make_event().items() if k != "source"}]}, "source", "required"),
    ({"events": [make_event(), make_event(event_id="")]}, "event_id", "empty"),
    ({"events": [make_event(), make_event(topic=["a"])]}, "topic", "must be a string"),
    ({"events": [make_event(), make_event(topic="t" * 257)]}, "topic", "at most 256 characters"),
])
def test_an_invalid_event_refuses_the_whole_batch(refusing_agg: AggSystem, body, field, words) -> None:
    agg = refusing_agg
    before = agg.expect_rejections(0)["rejected_by_reason"].get("invalid_event", 0)
    status, _, answer = agg.post("/publish", body)
    assert status == 422
    assert [(e["index"], e["field"]) for e in answer["errors"]] == [(1, field)], answer
    assert set(answer["errors"][0]) == {"index", "field", "message"} and words in answer["errors"][0]["message"]
    assert f"event 1: {field}" in answer["description"]
    assert events_of(agg) == []  # event 0 was valid, and it was not stored either
    stats = agg.expect_rejections(1)
    assert stats["received"] == 0 and stats["rejected_by_reason"]["invalid_event"] == before + 1


@pytest.mark.parametrize("raw, words", [
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[1, 2]", "one event object"),
    (b'{"events": 5}', "must be an array"),
    (b'{"events": []}', "empty"),
])
def test_malformed_bodies_get_422_json(refusing_agg: AggSystem, raw, words) -> None:
    status, headers, answer = refusing_agg.post("/publish", raw=raw)
    assert status == 422 and headers["content-type"].startswith("application/json")
    assert words in answer["description"]
    assert refusing_agg.expect_rejections(1)["received"] == 0 and events_of(refusing_agg) == []


def test_a_page_larger_than_a_workers_slice_is_merged_in_processing_order(agg: AggSystem) -> None:
    """Pages of 2,500 are merged from the workers' rows 1,000 at a time
    (agg.dispatch.merge), three quarters of them from worker 0: each round of
    publishes still comes after the one before, every event once."""
    zero, one = topic_of_worker(0), topic_of_worker(1)
    sent = []
    for round_ in range(12):
        batch = [make_event(topic=zero if i % 4 else one, event_id=f"{round_}-{i}") for i in range(400)]
        assert agg.post("/publish", {"events": batch})[0] == 200
        sent += [e["event_id"] for e in batch]
    paged, cursor, pages = [], "", 0
    while True:
        status, _, body = agg.get(f"/events?limit=2500{'&cursor=' + cursor if cursor else ''}")
        assert status == 200
        paged += [e["event_id"] for e in body["events"]]
        cursor, pages = body["next_cursor"], pages + 1
        if not body["has_more"]:
            break
    assert pages == 2 and sorted(paged) == sorted(sent) and len(paged) == len(sent)
    rounds = [int(event_id.split("-")[0]) for event_id in paged]
    assert rounds == sorted(rounds)


def test_size_limits(agg_factory) -> None:
    system = agg_factory(limits_max_body_bytes=2000, limits_max_batch_events=5)
    status, _, answer = system.post("/publish", raw=b"{" + b" " * 3000 + b"}")
    assert status == 413 and "2000" in answer["description"]
    status, _, answer = system.post("/publish", {"events": [make_event(event_id=str(i)) for i in range(6)]})
    assert status == 422 and "at most 5 events" in answer["description"]
    assert events_of(system) == []


def test_paging_with_a_cursor_returns_each_event_once_in_processing_order(agg: AggSystem) -> None:
    topics = ["a", "b", "c", "d", "e"]
    sent = []
    for round_ in range(6):
        batch = [make_event(topic=t, event_id=f"{round_}-{t}") for t in topics]
        assert agg.post("/publish", {"events": batch})[0] == 200
        sent += [(e["topic"], e["event_id"]) for e in batch]
    full = [(e["topic"], e["event_id"]) for e in events_of(agg)]
    assert sorted(full) == sorted(sent)
    # Processing order: each round's events come after the previous round's.
    rounds = [int(event_id.split("-")[0]) for _t, event_id in full]
    assert rounds == sorted(rounds)

    paged, cursor, pages = [], "", 0
    while True:
        status, _, body = agg.get(f"/events?limit=7{'&cursor=' + cursor if cursor else ''}")
        assert status == 200 and body["count"] <= 7
        paged += [(e["topic"], e["event_id"]) for e in body["events"]]
        cursor = body["next_cursor"]
        pages += 1
        if not body["has_more"]:
            break
    assert paged == full and pages == 5
    # The last cursor stays valid: it yields exactly what is committed after it.
    agg.post("/publish", make_event(topic="z", event_id="late"))
    status, _, body = agg.get(f"/events?limit=7&cursor={cursor}")
    assert [(e["topic"], e["event_id"]) for e in body["events"]] == [("z", "late")]

    by_topic = [e["event_id"] for e in events_of(agg, "?topic=c")]
    assert by_topic == [f"{r}-c" for r in range(6)]
    status, _, body = agg.get("/events?topic=c&limit=4")
    assert [e["event_id"] for e in body["events"]] == by_topic[:4]
    status, _, body = agg.get(f"/events?topic=c&limit=4&cursor={body['next_cursor']}")
    assert [e["event_id"] for e in body["events"]] == by_topic[4:]


@pytest.mark.parametrize("query, status_code", [
    ("?cursor=!!!", 400), ("?cursor=gQMB%2B", 400), ("?limit=0", 400), ("?limit=abc", 400),
    ("?limit=1000000", 400), ("?topic=%27%3B%20DROP%20TABLE%20events%3B--", 200),
])
def test_bad_query_parameters(reading_agg: AggSystem, query, status_code) -> None:
    status, _, body = reading_agg.get("/events" + query)
    assert status == status_code, body
    if status_code == 400:
        assert body["title"] and body["description"]
    else:
        assert body == {"events": [], "count": 0}


def test_unknown_route_and_method_answer_json(reading_agg: AggSystem) -> None:
    status, headers, body = reading_agg.get("/nope")
    assert status == 404 and headers["content-type"].startswith("application/json")
    status, _, body = http_request(reading_agg.url + "/publish", "GET")
    assert status == 405


def test_health_and_publish_say_503_when_a_worker_is_stopped(agg_factory) -> None:
    # Heartbeats come twenty times per stale window, so the running worker 1 never looks stale
    # between two of its snapshots, even on a loaded machine (0.5 s sometimes was not enough).
    system = agg_factory(stats_heartbeat_s=0.1, stats_stale_after_s=2, limits_ack_timeout_s=0.5,
                         limits_retry_after_s=2)
    pid = system.child_pid("worker.0")
    os.kill(pid, signal.SIGSTOP)
    try:
        status, _, body = wait_until(lambda: (lambda r: r if r[0] == 503 else None)(system.get("/health")),
                                     message="/health to notice")
        assert body["status"] == "unhealthy" and body["missing"] == ["worker 0"]
        topic = topic_of_worker(0)
        status, headers, body = system.post("/publish", make_event(topic=topic))
        assert status == 503 and headers["retry-after"] == "2"
        assert "worker 0" in body["description"]
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(lambda: system.get("/health")[0] == 200, message="recovery")
    assert system.post("/publish", make_event(topic=topic))[0] == 200


def socket_send_buffer_max() -> int:
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as fh:
            return int(fh.read().split()[2])
    except (OSError, ValueError, IndexError):
        return 4 << 20


def publish_more_than_a_socket_holds(agg: AggSystem) -> int:
    """Publish more events than the kernel buffers for a client that reads
    nothing, so that a listing of them is still going on when the test acts."""
    total = min(100_000, max(20_000, 2 * socket_send_buffer_max() // 200))
    for start in range(0, total, 5000):
        batch = [make_event(topic=f"t{i % 10}", event_id=f"early-{i}", payload={"pad": "x" * 80})
                 for i in range(start, min(total, start + 5000))]
        assert agg.post("/publish", {"events": batch})[0] == 200
    return total


@contextlib.contextmanager
def slow_listing(agg: AggSystem) -> Iterator[Callable[[], Any]]:
    """Start GET /events, read its first bytes, and yield a function that reads
    the rest and returns the whole body, parsed."""
    host, port = agg.url.split("//")[1].rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect, or it is ignored
    sock.connect((host, int(port)))
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.sock = sock
    try:
        conn.request("GET", "/events")
        response = conn.getresponse()
        assert response.status == 200
        head = response.read(100)
        yield lambda: json.loads(head + response.read())
    finally:
        conn.close()


def test_a_full_listing_holds_what_was_received_before_it_began(agg: AggSystem) -> None:
    total = publish_more_than_a_socket_holds(agg)
    with slow_listing(agg) as rest:
        late = [make_event(topic=f"t{i}", event_id=f"late-{i}") for i in range(10)]
        assert agg.post("/publish", {"events": late})[0] == 200
        body = rest()
    assert body["count"] == len(body["events"]) == total
    assert not [e for e in body["events"] if e["event_id"].startswith("late-")]
    assert len(events_of(agg)) == total + 10  # a listing begun now has them


@pytest.mark.parametrize("back", [True, False])
def test_a_full_listing_waits_for_a_stopped_worker_or_ends_unclosed(agg_factory, back) -> None:
    system = agg_factory(limits_stall_s=0.2, limits_ack_timeout_s=3 if back else 1)
    total = publish_more_than_a_socket_holds(system)
    pid = system.child_pid("worker.0")
    with slow_listing(system) as rest, concurrent.futures.ThreadPoolExecutor(1) as pool:
        os.kill(pid, signal.SIGSTOP)
        try:
            reading = pool.submit(rest)
            wait_until(lambda: "GET /events waits for a worker" in system.log_text(), 20,
                       message="the listing to meet the stopped worker")
            if back:
                os.kill(pid, signal.SIGCONT)
                body = reading.result(60)
                assert body["count"] == len(body["events"]) == total
                assert {e["event_id"] for e in body["events"]} == {f"early-{i}" for i in range(total)}
            else:
                # Given up: the JSON is left unclosed, so it cannot pass for the whole listing.
                with pytest.raises(ValueError):
                    reading.result(60)
                assert "GET /events cut short" in system.log_text()
        finally:
            os.kill(pid, signal.SIGCONT)
