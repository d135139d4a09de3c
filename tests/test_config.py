"""Configuration: defaults, the TOML file, AGG_* variables and flags, and one-line errors."""

import argparse
import os
import subprocess
import sys

import pytest

from agg import conffile
from agg import config as configmod

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse(argv, environ=None):
    parser = argparse.ArgumentParser()
    configmod.add_arguments(parser)
    return configmod.load(parser.parse_args(argv), environ or {})


def test_conf_file_lists_every_setting_with_its_default(tmp_path) -> None:
    path = os.path.join(ROOT, "conf", "agg.toml")
    loaded = parse(["--config", path])
    assert loaded == configmod.defaults()
    with open(path) as fh:
        text = fh.read()
    for setting in configmod.SCHEMA:
        section, _, name = setting.key.rpartition(".")
        body = text.split(f"[{section}]\n", 1)[1].split("\n[", 1)[0] if section else text.split("\n[", 1)[0]
        assert f"\n{name} = " in body, f"{setting.key} missing from conf/agg.toml"
    # the file is what agg.conffile writes, so its comments are SCHEMA's help too
    assert text == conffile.render(), "conf/agg.toml is stale: python -m agg.conffile > conf/agg.toml"


def test_flag_beats_environment_beats_file(tmp_path) -> None:
    toml = tmp_path / "agg.toml"
    toml.write_text('workers = 3\n[http]\nport = 9000\nhost = "127.0.0.2"\n')
    env = {"AGG_HTTP_PORT": "9100", "AGG_WORKERS": "4"}
    cfg = parse(["--config", str(toml), "--workers", "5"], env)
    assert cfg.workers == 5            # flag
    assert cfg.http.port == 9100       # environment over file
    assert cfg.http.host == "127.0.0.2"  # file over default
    assert cfg.partitions == 8         # default


def test_data_dir_and_run_dir_are_absolute(tmp_path) -> None:
    cfg = parse(["--data-dir", str(tmp_path / "d")])
    assert cfg.data_dir == str(tmp_path / "d")
    assert cfg.run_dir == str(tmp_path / "d" / "run")
    assert cfg.endpoint("worker", 1) == f"ipc://{tmp_path}/d/run/w1.sock"


@pytest.mark.parametrize("argv, env, words", [
    (["--http-port", "eighty"], {}, ["http.port", "--http-port", "expected int"]),
    ([], {"AGG_WORKERS": "0"}, ["workers", "AGG_WORKERS", "at least 1"]),
    ([], {"AGG_STORAGE_SYNCHRONOUS": "sometimes"}, ["storage.synchronous", "GROUP"]),
    ([], {"AGG_HTTP_ENABLED": "maybe"}, ["http.enabled", "expected bool"]),
    ([], {"AGG_STATS_STALE_AFTER_S": "0.5"}, ["stats.stale_after_s", "stats.heartbeat_s", "0.5"]),
])
def test_bad_value_names_the_key(argv, env, words) -> None:
    with pytest.raises(configmod.ConfigError) as caught:
        parse(argv, env)
    message = str(caught.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_unknown_key_in_file_is_refused(tmp_path) -> None:
    toml = tmp_path / "agg.toml"
    toml.write_text("[http]\nprot = 1\n")
    with pytest.raises(configmod.ConfigError, match=r"http\.prot .*unknown setting"):
        parse(["--config", str(toml)])


def test_agg_run_prints_one_line_for_a_bad_config(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGG_")}
    env["AGG_HTTP_PORT"] = "-5"
    out = subprocess.run([sys.executable, "-m", "agg", "run", "--data-dir", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=30, cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "http.port" in lines[0] and "Traceback" not in out.stderr


def test_a_socket_path_too_long_is_named_before_anything_starts(tmp_path) -> None:
    """A deep data directory makes ipc:// paths longer than a Unix socket takes:
    said per endpoint in one line each, not as a child's traceback."""
    deep = tmp_path / ("d" * 100)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGG_")}
    out = subprocess.run([sys.executable, "-m", "agg", "run", "--data-dir", str(deep)],
                         capture_output=True, text=True, env=env, timeout=30, cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines[0].startswith("agg: config error: endpoints.worker: the socket path ") and "run_dir" in lines[0]
    assert {line.split(":")[2].strip() for line in lines} == {
        "endpoints.worker", "endpoints.stats_in", "endpoints.stats", "endpoints.control", "endpoints.ctl"}
    assert not deep.exists()  # nothing was made
    # A short run_dir beside the deep data directory is enough.
    ok = agg_config("check", "--data-dir", str(deep), "--run-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr


def agg_config(*args, env=None, cwd=None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AGG_")}
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "agg", "config", *args], capture_output=True,
                          text=True, env=environ, timeout=30, cwd=cwd)


def test_config_show_says_where_each_value_came_from(tmp_path) -> None:
    toml = tmp_path / "agg.toml"
    toml.write_text('workers = 3\n[http]\nport = 9000\n')
    out = agg_config("show", "--config", str(toml), "--partitions", "4",
                     env={"AGG_HTTP_PORT": "9100", "AGG_HTTP_READ_TOKEN": "s3cr3t-token"}, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "\nworkers = 3  # file " + str(toml) + "\n" in text
    assert "\nport = 9100  # env AGG_HTTP_PORT\n" in text
    assert "\npartitions = 4  # flag --partitions\n" in text
    assert '\nhost = "127.0.0.1"  # default\n' in text
    assert "s3cr3t-token" not in text and '\nread_token = "********"  # env AGG_HTTP_READ_TOKEN\n' in text
    # What it prints is a configuration file that gives the same configuration.
    shown = tmp_path / "shown.toml"
    shown.write_text(text)
    again = parse(["--config", str(shown)])
    want = parse(["--config", str(toml), "--partitions", "4", "--data-dir", str(tmp_path / "data")],
                 {"AGG_HTTP_PORT": "9100"})
    assert again.replace({"http.read_token": ""}) == want
    assert text.count("  # ") == len(configmod.SCHEMA)


def test_config_check_lists_every_problem_one_line_each(tmp_path) -> None:
    assert agg_config("check", cwd=tmp_path).stdout == "ok\n"
    toml = tmp_path / "bad.toml"
    toml.write_text('[http]\nport = "x"\nprot = 1\n')
    out = agg_config("check", "--config", str(toml), "--stats-heartbeat-s", "5",
                     env={"AGG_PARTITIONS": "zero", "AGG_SUPERVISOR_HANG_S": "1"}, cwd=tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert lines == [
        f"agg: config error: http.port ({toml}): expected int, got 'x'",
        f"agg: config error: http.prot ({toml}): unknown setting",
        "agg: config error: partitions (AGG_PARTITIONS): expected int, got 'zero'",
        "agg: config error: supervisor.hang_s: must be 0 (never) or at least 2, got 1",
        "agg: config error: stats.stale_after_s: must be at least twice stats.heartbeat_s (5), got 3",
    ]


def test_load_raises_every_problem_at_once() -> None:
    with pytest.raises(configmod.ConfigError) as caught:
        parse(["--http-port", "eighty", "--workers", "0"], {"AGG_LOG_LEVEL": "loud"})
    assert sorted(p.split(":")[0] for p in caught.value.problems) == [
        "http.port (--http-port)", "log_level (AGG_LOG_LEVEL)", "workers (--workers)"]
