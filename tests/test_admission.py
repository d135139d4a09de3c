"""The front bounds what it takes in before it reads a body: requests held,
body bytes held, connections, how late its loop runs, and how long a head or
a body may take.
Past a bound a publisher hears 503 with Retry-After at once (or 408 for a
body too slow), and nothing is reset without an answer."""

from __future__ import annotations

import concurrent.futures
import json
import socket
import threading
import time
from typing import Dict, List, Optional, Tuple

from conftest import AggSystem, busy_loop_env, http_request, make_event, wait_until


def connect(system: AggSystem) -> socket.socket:
    host, port = system.url.split("//")[1].rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=30)


def post_head(length: int) -> bytes:
    return (b"POST /publish HTTP/1.1\r\nHost: agg\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % length)


def read_answer(sock: socket.socket) -> Tuple[int, Dict[str, str], bytes]:
    """(status, headers, body) of one response with a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed without an answer: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)):
        chunk = sock.recv(65536)
        assert chunk, "the connection closed inside an answer"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def closed(sock: socket.socket) -> bool:
    """Whether the peer has closed ``sock`` (what it sent before is read and dropped)."""
    sock.settimeout(30)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


def body_of(events: List[dict]) -> bytes:
    return json.dumps({"events": events}).encode()


def test_past_its_request_bound_the_front_says_503_before_reading_a_body(agg_factory) -> None:
    """The refusal comes from the head alone (the gate, before Falcon, which
    would wait for the body's first bytes): no byte of its body is sent."""
    system: AggSystem = agg_factory(http_max_publishes=2, http_body_timeout_s=30, http_header_timeout_s=30)
    bodies = [body_of([make_event(event_id=f"held-{i}")]) for i in range(2)]
    held = []
    for body in bodies:  # two requests whose bodies are not all here: the front holds them
        sock = connect(system)
        sock.sendall(post_head(len(body)) + body[:10])
        held.append(sock)

    def refused() -> Optional[Tuple[int, Dict[str, str], bytes, float]]:
        sock = connect(system)
        try:
            start = time.monotonic()
            sock.sendall(post_head(5_000_000))  # its body never comes
            status, headers, answer = read_answer(sock)
            return (status, headers, answer, time.monotonic() - start) if status == 503 else None
        finally:
            sock.close()
    status, headers, answer, took = wait_until(refused, message="the third request refused")
    assert headers["retry-after"] == "1" and "holds 2 requests" in json.loads(answer)["description"]
    assert took < 2.0, took  # at once, not after waiting for a body (100 ms in agg-bench's terms)
    too_large = connect(system)  # full or not, a body declared over the limit is 413
    too_large.sendall(post_head(17 * 2**20))
    assert read_answer(too_large)[0] == 413
    too_large.close()
    for sock, body in zip(held, bodies):  # the held ones are served as usual
        sock.sendall(body[10:])
        assert read_answer(sock)[0] == 200
        sock.close()
    system.wait_stats(received=2, unique=2, duplicates=0)


def test_past_its_byte_bound_the_front_says_503_before_reading_a_body(agg_factory) -> None:
    """Requests are far under http.max_publishes, but their bodies' bytes pass
    limits.max_reading_bytes: the next body is refused before it is read."""
    system: AggSystem = agg_factory(http_max_publishes=1000, limits_max_reading_bytes=100_000,
                                    http_body_timeout_s=30, http_header_timeout_s=30)
    body = body_of([make_event(event_id=f"bytes-{i}", payload={"pad": "p" * 500}) for i in range(100)])
    assert 50_000 < len(body) < 100_000
    held = connect(system)
    held.sendall(post_head(len(body)) + body[:10])  # the front holds its bytes, reading the rest

    def refused() -> Optional[Tuple[int, Dict[str, str], bytes]]:
        sock = connect(system)
        try:
            sock.sendall(post_head(len(body)))  # its body never comes: the head is enough
            status, headers, answer = read_answer(sock)
            return (status, headers, answer) if status == 503 else None
        finally:
            sock.close()
    status, headers, answer = wait_until(refused, message="the second body refused")
    assert headers["retry-after"] == "1" and "bytes of requests" in json.loads(answer)["description"]
    held.sendall(body[10:])
    assert read_answer(held)[0] == 200
    held.close()
    # The bytes are given back: a body of the same size is taken again.
    assert http_request(system.url + "/publish", "POST", raw=body.replace(b"bytes-", b"again-"))[0] == 200
    system.wait_stats(received=200, unique=200, duplicates=0)


def test_a_front_whose_loop_runs_late_refuses_what_would_wait_behind(agg_factory, tmp_base) -> None:
    """A hook keeps the front's event loop busy 50 ms a turn, as a saturated one
    is. While it holds a publish, the next is refused from its head, saying how
    late the loop runs (a 503 now, not after the turns ahead of it); a publish
    first in line is taken: refusing it would shed nothing."""
    system: AggSystem = agg_factory(env=busy_loop_env(tmp_base, "front"),
                                    http_body_timeout_s=30, http_header_timeout_s=30)
    body = body_of([make_event(event_id="held")])
    held = connect(system)
    held.sendall(post_head(len(body)) + body[:10])  # the front holds it, reading the rest
    probes = iter(range(1000))
    taken = []

    def refused() -> Optional[Tuple[int, Dict[str, str], bytes]]:
        # Whole publishes: the loop's lateness is measured from the held one's admission on,
        # so one that comes at once may still be taken (and answered).
        probe = body_of([make_event(event_id=f"probe-{next(probes)}")])
        sock = connect(system)
        try:
            sock.sendall(post_head(len(probe)) + probe)
            status, headers, answer = read_answer(sock)
            if status == 200:
                taken.append(probe)
            return (status, headers, answer) if status == 503 else None
        finally:
            sock.close()
    status, headers, answer = wait_until(refused, message="a publish behind the held one refused")
    description = json.loads(answer)["description"]
    assert headers["retry-after"] == "1" and "the front runs" in description and "ms behind" in description
    held.sendall(body[10:])
    assert read_answer(held)[0] == 200
    held.close()
    for i in range(3):  # one at a time, each first in line
        status, _, answer = system.post("/publish", make_event(event_id=f"alone-{i}"))
        assert status == 200, answer
    stored = 4 + len(taken)
    system.wait_stats(received=stored, unique=stored, duplicates=0)


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024


def test_memory_follows_the_bound_not_the_bodies_clients_send(agg_factory) -> None:
    """24 clients each post 4 MB at once; the front holds at most 8 MiB of
    bodies: the rest hear 503 before their bodies are read, every client gets
    an answer, and the front's memory stays far below 24 bodies' worth."""
    system: AggSystem = agg_factory(limits_max_reading_bytes=8 * 1024 * 1024)
    front = system.child_pid("front")
    events = [make_event(topic=f"t{i % 9}", event_id=f"big-{i}", payload={"pad": "y" * 300})
              for i in range(9000)]
    body = body_of(events)
    assert len(body) > 3_500_000
    before = rss_mib(front)
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):  # the sampling period of the probe, not a synchronisation
            peak[0] = max(peak[0], rss_mib(front))
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            answers = list(pool.map(lambda _: http_request(system.url + "/publish", "POST", raw=body,
                                                           timeout=120), range(24)))
    finally:
        done.set()
        sampler.join()
    codes = [status for status, _headers, _body in answers]
    print(f"\n24 x {len(body) / 1e6:.1f} MB: {codes.count(200)} stored, {codes.count(503)} refused; "
          f"front RSS {before:.0f} -> peak {peak[0]:.0f} MiB")
    assert set(codes) <= {200, 503} and codes.count(200) >= 1 and codes.count(503) >= 1, codes
    assert all(h["retry-after"] == "1" for status, h, _b in answers if status == 503)
    # 24 bodies read at once would take over 24 x 4 MB raw, more parsed.
    assert peak[0] - before < 150, f"the front grew by {peak[0] - before:.0f} MiB"


def test_a_slow_body_gets_408_and_slow_clients_do_not_slow_a_publish(agg_factory) -> None:
    system: AggSystem = agg_factory(http_body_timeout_s=1.5)
    body = body_of([make_event(event_id="slow")])
    slow = []
    for _ in range(20):
        sock = connect(system)
        sock.sendall(post_head(len(body)) + body[:5])
        slow.append(sock)
    start = time.monotonic()
    status, _, answer = system.post("/publish", make_event(event_id="beside"))
    took = time.monotonic() - start
    assert status == 200 and answer["stored"] == 1
    assert took < 1.0, took
    headless = connect(system)
    headless.sendall(post_head(len(body)))  # a head, and never a byte of its body
    for sock in slow:
        status, headers, answer = read_answer(sock)
        assert status == 408 and headers["connection"] == "close", answer
        assert "did not arrive within 1.5 s" in json.loads(answer)["description"]
        assert closed(sock)
        sock.close()
    status, headers, answer = read_answer(headless)
    assert status == 408 and headers["connection"] == "close", answer
    assert "did not begin within 1.5 s" in json.loads(answer)["description"]
    assert closed(headless)
    headless.close()
    system.wait_stats(received=1, unique=1, duplicates=0)
    wait_until(lambda: system.stats()["rejected_by_reason"].get("body_timeout") == 21,
               message="the 408s counted")
    assert system.stats()["rejected"] == 21  # each once, and as nothing else


def test_a_request_refused_from_its_head_is_owed_nothing_more(agg_factory) -> None:
    """Refused at its head, a publish whose body never comes gets no second
    answer (a 408 there would be read as the answer to the next request)."""
    system: AggSystem = agg_factory(http_max_publishes=1, http_body_timeout_s=1.5)
    held = connect(system)
    body = body_of([make_event(event_id="held")])
    held.sendall(post_head(len(body)) + body[:10])  # the front holds it, for 1.5 s

    def refused() -> Optional[socket.socket]:
        sock = connect(system)
        sock.sendall(post_head(100_000))  # its body never comes
        if read_answer(sock)[0] == 503:
            return sock
        sock.close()
        return None
    sock = wait_until(refused, message="a publish refused from its head")
    sock.settimeout(3 * 1.5)
    try:
        extra = sock.recv(65536)  # the connection stays open, and says nothing more
    except socket.timeout:
        extra = None
    assert extra is None, extra
    sock.close()
    assert read_answer(held)[0] == 408  # the held one's body did begin, and stopped
    held.close()


def test_a_connection_that_keeps_its_head_waiting_is_closed(agg_factory) -> None:
    system: AggSystem = agg_factory(http_header_timeout_s=1)
    silent, trickling = connect(system), connect(system)
    trickling.sendall(b"POST /publish HTTP/1.1\r\nHost: ag")
    start = time.monotonic()
    for sock in (silent, trickling):
        assert closed(sock)
        sock.close()
    assert time.monotonic() - start < 15
    # A connection that sends its requests in time is served, also after its first answer.
    sock = connect(system)
    for i in range(2):
        body = body_of([make_event(event_id=f"kept-{i}")])
        sock.sendall(post_head(len(body)) + body)
        assert read_answer(sock)[0] == 200
    sock.close()


def test_past_its_connection_bound_the_front_says_503_and_closes(agg_factory) -> None:
    system: AggSystem = agg_factory(http_max_connections=4)
    idle = [connect(system) for _ in range(5)]
    try:
        def refused() -> Optional[Tuple[int, Dict[str, str], bytes]]:
            sock = connect(system)
            try:
                body = body_of([make_event(event_id="one too many")])
                sock.sendall(post_head(len(body)) + body)
                answer = read_answer(sock)
                if answer[0] == 503:
                    assert closed(sock)
                    return answer
                return None
            finally:
                sock.close()
        status, headers, answer = wait_until(refused, message="a request over the bound refused")
        assert headers["retry-after"] == "1" and headers["connection"] == "close"
        assert "connections" in json.loads(answer)["description"]
    finally:
        for sock in idle:
            sock.close()
    wait_until(lambda: system.post("/publish", make_event(event_id="after"))[0] == 200,
               message="served again once the connections are gone")
