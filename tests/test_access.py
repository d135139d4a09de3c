"""Optional bearer tokens: one for POST /publish, another for reads."""

import json
import os
import subprocess
import sys

from conftest import AggSystem, http_request, make_event, wait_until

PUBLISH, READ = "pub-token-0123456789", "read-token-9876543210"


def test_tokens_guard_publish_and_reads(agg_factory) -> None:
    system: AggSystem = agg_factory(http_publish_token=PUBLISH, http_read_token=READ)
    url = system.url
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {READ}"},
                    {"Authorization": PUBLISH}):
        status, hdrs, body = http_request(url + "/publish", "POST", make_event(), headers=headers)
        assert status == 401 and "Bearer" in hdrs["www-authenticate"], (headers, body)
        assert "POST /publish" in body["description"]
    status, _, body = http_request(url + "/publish", "POST", make_event(),
                                   headers={"Authorization": f"Bearer {PUBLISH}"})
    assert status == 200 and body["stored"] == 1

    for path in ("/events", "/events?limit=5", "/stats", "/metrics"):
        assert http_request(url + path)[0] == 401
        assert http_request(url + path, headers={"Authorization": f"Bearer {PUBLISH}"})[0] == 401
        assert http_request(url + path, headers={"Authorization": f"bearer {READ}"})[0] == 200
    assert http_request(url + "/health")[0] == 200  # open, for load balancers and probes

    env = {**os.environ, "AGG_PUBLISH_TOKEN": PUBLISH, "AGG_READ_TOKEN": READ}
    out = subprocess.run([sys.executable, "-m", "agg.tools.publish", "--url", url, "--events", "100", "--json"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0 and json.loads(out.stdout)["acknowledged"] == 100, out.stderr

    def stats():
        out = subprocess.run([sys.executable, "-m", "agg.tools.statscli", "--url", url, "--json"],
                             capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)
    counted = wait_until(lambda: (lambda s: s if s["rejected"] == 12 else None)(stats()),
                         message="the 401s counted")
    assert counted["rejected_by_reason"] == {"unauthorized": 12}
    assert counted["received"] == 101
