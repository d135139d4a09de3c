"""The actors also run alone, without the supervisor, as in docker-compose.distributed.yml:
each started by hand, finding the others through the endpoints.* settings."""

import os
import re
import signal
import subprocess
import sys

from conftest import http_request, make_event, wait_until


def test_actors_started_one_by_one_work_together(tmp_base) -> None:
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
            with open(logs[name], "wb") as log:
                procs[name] = subprocess.Popen([sys.executable, "-m", "agg", *args], env=env,
                                               stdout=log, stderr=subprocess.STDOUT, cwd=tmp_base)

        def front_url():
            with open(logs["front"]) as fh:
                found = re.search(r"listening on (http://\S+)", fh.read())
            return found.group(1) if found else None
        url = wait_until(front_url, 30, message="the front to listen")
        wait_until(lambda: http_request(url + "/health")[0] == 200, 30, message="healthy")
        status, _, body = http_request(url + "/publish", "POST",
                                       {"events": [make_event(topic=f"t{i}", event_id="x") for i in range(20)]})
        assert status == 200 and body["stored"] == 20
        assert http_request(url + "/events")[2]["count"] == 20
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
