"""The actors also run alone, without the supervisor, as in docker-compose.distributed.yml:
each started by hand, finding the others through the endpoints.* settings."""

import contextlib
import os
import re
import signal
import subprocess
import sys
from typing import Dict, Iterator

from conftest import http_request, make_event, wait_until


@contextlib.contextmanager
def actors(tmp_base: str, front_env: Dict[str, str]) -> Iterator[str]:
    """stats, two workers and a front, each a process of its own; the front's URL.
    Each must stop with status 0 on SIGTERM."""
    run = os.path.join(tmp_base, "run")
    os.makedirs(run)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGG_")}
    env.update({
        "AGG_DATA_DIR": os.path.join(tmp_base, "data"), "AGG_RUN_DIR": run, "AGG_WORKERS": "2",
        "AGG_HTTP_PORT": "0", "AGG_INGEST_ENDPOINT": "tcp://127.0.0.1:0",
        # Bind and connect spelled apart, as containers do (here the same ipc paths).
        "AGG_ENDPOINTS_WORKER": f"ipc://{run}/worker-{{index}}.sock",
        "AGG_ENDPOINTS_WORKER_BIND": f"ipc://{run}/worker-{{index}}.sock",
        "AGG_ENDPOINTS_STATS_IN_BIND": f"ipc://{run}/stats-in.sock",
        "AGG_ENDPOINTS_STATS_BIND": f"ipc://{run}/stats.sock",
    })
    logs = {}
    procs = {}
    try:
        for name, args in (("stats", ["stats"]), ("w0", ["worker", "--index", "0"]),
                           ("w1", ["worker", "--index", "1"]), ("front", ["front"])):
            logs[name] = os.path.join(tmp_base, f"{name}.log")
            own_env = dict(env, **(front_env if name == "front" else {}))
            with open(logs[name], "wb") as log:
                procs[name] = subprocess.Popen([sys.executable, "-m", "agg", *args], env=own_env,
                                               stdout=log, stderr=subprocess.STDOUT, cwd=tmp_base)

        def front_url():
            with open(logs["front"]) as fh:
                found = re.search(r"listening on (http://\S+)", fh.read())
            return found.group(1) if found else None
        yield wait_until(front_url, 30, message="the front to listen")
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in procs.items():
            try:
                assert proc.wait(20) == 0, f"{name} exited with {proc.returncode}"
            except subprocess.TimeoutExpired:
                proc.kill()
                raise


def test_actors_started_one_by_one_work_together(tmp_base) -> None:
    with actors(tmp_base, {}) as url:
        # Healthy means the front is connected to every worker: a publish is then taken.
        wait_until(lambda: http_request(url + "/health")[0] == 200, 30, message="healthy")
        status, _, body = http_request(url + "/publish", "POST",
                                       {"events": [make_event(topic=f"t{i}", event_id="x") for i in range(20)]})
        assert status == 200 and body["stored"] == 20
        assert http_request(url + "/events")[2]["count"] == 20


def test_a_front_that_cannot_reach_its_workers_is_unhealthy(tmp_base) -> None:
    """The workers are up and report to the stats process, but the front looks
    for them at the wrong address: /health says so, as publishes would."""
    wrong = os.path.join(tmp_base, "run", "elsewhere-{index}.sock")
    with actors(tmp_base, {"AGG_ENDPOINTS_WORKER": f"ipc://{wrong}"}) as url:
        def workers_alive():
            status, _, body = http_request(url + "/health")
            return body if body.get("workers") and all(w["alive"] for w in body["workers"].values()) else None
        body = wait_until(workers_alive, 30, message="the stats process to see both workers")
        assert body["status"] == "unhealthy"
        assert body["missing"] == body["unreachable"] == ["worker 0", "worker 1"]
        status, headers, body = http_request(url + "/publish", "POST", make_event())
        assert status == 503 and headers["retry-after"] == "1", body
