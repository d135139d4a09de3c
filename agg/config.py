"""Configuration: one schema, three layers.

Every setting has a dotted key (``http.port``) declared once in ``SCHEMA``
with its type and default. Values come from, lowest to highest priority:

1. the defaults below,
2. a TOML file (``--config``, ``$AGG_CONFIG``, or ``conf/agg.toml`` in the
   current directory when it exists),
3. ``AGG_*`` environment variables (``http.port`` -> ``AGG_HTTP_PORT``),
4. command-line flags (``http.port`` -> ``--http-port``).

A bad value raises ``ConfigError`` whose message names the key and where the
value came from, so that ``main()`` can print it as one line.

The supervisor hands the resolved configuration to its children in
``$AGG_RESOLVED_CONFIG`` (JSON) so that every process sees the same values.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on older interpreters only
    import tomli as tomllib

RESOLVED_ENV = "AGG_RESOLVED_CONFIG"
CONFIG_ENV = "AGG_CONFIG"
DEFAULT_CONFIG_FILE = os.path.join("conf", "agg.toml")

MIB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Setting:
    key: str
    type: type
    default: Any
    help: str
    choices: Tuple[str, ...] = ()
    minimum: Optional[float] = None


SCHEMA: Tuple[Setting, ...] = (
    Setting("data_dir", str, "./data", "directory of the SQLite shards; created if missing"),
    Setting("run_dir", str, "", "directory of ipc:// sockets and run files (default: DATA_DIR/run)"),
    Setting("partitions", int, 8, "partition count, fixed when the data directory is created", minimum=1),
    Setting("workers", int, 2, "number of dedup worker processes", minimum=1),
    Setting("log_level", str, "info", "log level of every process",
            choices=("debug", "info", "warning", "error")),
    Setting("http.enabled", bool, True, "run the HTTP front"),
    Setting("http.host", str, "127.0.0.1", "address the HTTP front binds"),
    Setting("http.port", int, 8080, "port the HTTP front binds (0: any free port)", minimum=0),
    Setting("http.publish_token", str, "",
            "bearer token POST /publish requires (empty: none; prefer AGG_HTTP_PUBLISH_TOKEN)"),
    Setting("http.read_token", str, "",
            "bearer token GET /events and GET /stats require (empty: none)"),
    Setting("ingest.enabled", bool, True, "run the native ZeroMQ ingest"),
    Setting("ingest.endpoint", str, "tcp://127.0.0.1:5555",
            "endpoint the native ingest binds (tcp://HOST:0 picks a free port)"),
    Setting("ingest.curve_secret_key", str, "",
            "file with the ingest's CURVE key pair (zmq.auth format); empty: no CURVE"),
    Setting("ingest.curve_clients_dir", str, "",
            "directory of allowed client public keys (zmq.auth format)"),
    Setting("endpoints.worker", str, "ipc://{run_dir}/w{index}.sock",
            "endpoint of worker INDEX; {run_dir} and {index} are filled in"),
    Setting("endpoints.worker_bind", str, "",
            "what worker INDEX binds, if not endpoints.worker (e.g. tcp://0.0.0.0:7000 in a container)"),
    Setting("endpoints.stats_in", str, "ipc://{run_dir}/stats-in.sock",
            "endpoint where the stats process collects counter snapshots"),
    Setting("endpoints.stats_in_bind", str, "", "what the stats process binds, if not endpoints.stats_in"),
    Setting("endpoints.stats", str, "ipc://{run_dir}/stats.sock",
            "endpoint where the stats process answers queries"),
    Setting("endpoints.stats_bind", str, "", "what the stats process binds, if not endpoints.stats"),
    Setting("endpoints.control", str, "ipc://{run_dir}/control.sock",
            "endpoint where the supervisor collects READY messages"),
    Setting("limits.max_body_bytes", int, 16 * MIB, "largest HTTP request body", minimum=1),
    Setting("limits.max_frame_bytes", int, 16 * MIB, "largest native ingest message", minimum=1),
    Setting("limits.max_batch_events", int, 10000, "most events in one request or batch", minimum=1),
    Setting("limits.max_field_chars", int, 256,
            "longest topic, event_id or source, in characters", minimum=1),
    Setting("limits.max_payload_bytes", int, 64 * 1024, "largest payload, encoded as JSON", minimum=2),
    Setting("limits.max_events_page", int, 10000, "largest page of GET /events", minimum=1),
    Setting("limits.max_inflight_events", int, 200000,
            "events sent to one worker and not yet acknowledged; past it: 503", minimum=1),
    Setting("limits.ack_timeout_s", float, 10.0,
            "how long the front waits for a worker's commit before answering 503", minimum=0.01),
    Setting("limits.stall_s", float, 0.5,
            "a worker silent this long with requests pending is stalled: 503 until it answers",
            minimum=0.01),
    Setting("limits.retry_after_s", int, 1, "Retry-After sent with a 503", minimum=0),
    Setting("storage.synchronous", str, "FULL", "SQLite synchronous mode of the shards",
            choices=("FULL", "NORMAL", "EXTRA")),
    Setting("storage.group_max_events", int, 5000,
            "most events a worker commits in one group commit", minimum=1),
    Setting("storage.cache_mib", int, 64, "SQLite page cache per shard, in MiB", minimum=1),
    Setting("storage.wal_autocheckpoint", int, 16000,
            "WAL pages after which a commit also checkpoints, staggered 0.75-1.25x across a "
            "worker's shards: a backstop, since a thread of the worker checkpoints every 0.2 s",
            minimum=0),
    Setting("storage.index_save_rows", int, 100_000,
            "rows a shard may add before its key index file is saved again; a start reads "
            "at most these rows per shard to catch up (idle workers save sooner)",
            minimum=1),
    Setting("stats.publish_interval_s", float, 0.0,
            "least time between two counter snapshots of a worker (0: after every commit)",
            minimum=0.0),
    Setting("stats.heartbeat_s", float, 0.5, "a worker sends its snapshot at least this often",
            minimum=0.01),
    Setting("stats.stale_after_s", float, 3.0,
            "a worker silent this long is reported down (at least twice stats.heartbeat_s)",
            minimum=0.01),
    Setting("supervisor.ready_timeout_s", float, 30.0,
            "how long a child may go silent before it says READY (a worker loading keys beats)",
            minimum=0.1),
    Setting("supervisor.grace_s", float, 10.0, "how long a child may take to stop before SIGKILL",
            minimum=0.0),
    Setting("supervisor.hang_s", float, 30.0,
            "a child whose loop has not turned for this long is killed and restarted "
            "(0: never; else at least 2, children beat every second)",
            minimum=0.0),
    Setting("supervisor.max_restarts", int, 5,
            "restarts of one child within restart_window_s before the supervisor gives up",
            minimum=0),
    Setting("supervisor.restart_window_s", float, 60.0, "window of max_restarts", minimum=0.1),
)

SETTINGS: Dict[str, Setting] = {s.key: s for s in SCHEMA}


class ConfigError(Exception):
    """A bad configuration value; the message names the key."""


def env_name(key: str) -> str:
    return "AGG_" + key.replace(".", "_").upper()


def flag_name(key: str) -> str:
    return "--" + key.replace(".", "-").replace("_", "-")


def attr_name(key: str) -> str:
    return key.replace(".", "_")


def _coerce(setting: Setting, value: Any, origin: str) -> Any:
    """Convert ``value`` to the setting's type or raise a one-line ConfigError."""
    where = f"{setting.key} ({origin})"
    want = setting.type
    try:
        if want is bool:
            if isinstance(value, bool):
                result: Any = value
            elif isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
                result = True
            elif isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
                result = False
            else:
                raise ValueError
        elif want is int:
            if isinstance(value, bool) or isinstance(value, float):
                raise ValueError
            result = int(value)
        elif want is float:
            if isinstance(value, bool):
                raise ValueError
            result = float(value)
        else:
            if not isinstance(value, str):
                raise ValueError
            result = value
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected {want.__name__}, got {value!r}") from None
    if setting.choices:
        normal = result.upper() if setting.choices[0].isupper() else result.lower()
        if normal not in setting.choices:
            raise ConfigError(f"{where}: expected one of {', '.join(setting.choices)}, got {value!r}")
        result = normal
    if setting.minimum is not None and result < setting.minimum:
        raise ConfigError(f"{where}: must be at least {setting.minimum:g}, got {value!r}")
    return result


def _flatten(table: Mapping[str, Any], prefix: str = "") -> Iterable[Tuple[str, Any]]:
    for name, value in table.items():
        key = prefix + name
        if isinstance(value, dict):
            yield from _flatten(value, key + ".")
        else:
            yield key, value


@dataclasses.dataclass(frozen=True)
class Config:
    """The resolved configuration; attribute names are the keys with ``_`` for ``.``."""

    values: Mapping[str, Any]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    def get(self, key: str) -> Any:
        return self.values[attr_name(key)]

    def endpoint(self, key: str, index: int = 0) -> str:
        template = self.get("endpoints." + key)
        return template.format(run_dir=self.run_dir, index=index)

    def bind_endpoint(self, key: str, index: int = 0) -> str:
        """What the owner of endpoint ``key`` binds: ``endpoints.KEY_bind`` if set
        (a container binds 0.0.0.0 while peers connect to its name), else ``endpoints.KEY``."""
        template = self.get("endpoints." + key + "_bind") or self.get("endpoints." + key)
        return template.format(run_dir=self.run_dir, index=index)

    def worker_endpoints(self) -> List[str]:
        return [self.endpoint("worker", i) for i in range(self.workers)]

    def to_json(self) -> str:
        return json.dumps(dict(self.values))

    def replace(self, **changes: Any) -> "Config":
        values = dict(self.values)
        for name, value in changes.items():
            if name not in values:
                raise KeyError(name)
            values[name] = value
        return Config(values)


def _finish(values: Dict[str, Any]) -> Config:
    # Children beat every second: a shorter wait would kill healthy ones between beats.
    if 0 < values["supervisor_hang_s"] < 2:
        raise ConfigError(f"supervisor.hang_s: must be 0 (never) or at least 2, "
                          f"got {values['supervisor_hang_s']:g}")
    # A worker sends a snapshot every heartbeat (give or take its 100 ms tick); a window not
    # well above that reports healthy workers down between two of their snapshots.
    if values["stats_stale_after_s"] < 2 * values["stats_heartbeat_s"]:
        raise ConfigError(f"stats.stale_after_s: must be at least twice stats.heartbeat_s "
                          f"({values['stats_heartbeat_s']:g}), got {values['stats_stale_after_s']:g}")
    values["data_dir"] = os.path.abspath(values["data_dir"])
    if not values["run_dir"]:
        values["run_dir"] = os.path.join(values["data_dir"], "run")
    values["run_dir"] = os.path.abspath(values["run_dir"])
    return Config(values)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and one flag per setting to ``parser``."""
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file")
    group = parser.add_argument_group("settings (flag > AGG_* environment > TOML file > default)")
    for setting in SCHEMA:
        group.add_argument(flag_name(setting.key), dest="cfg_" + attr_name(setting.key),
                           metavar=setting.type.__name__.upper(), default=None,
                           help=f"{setting.help} [{setting.default!r}]")


def load(args: Optional[argparse.Namespace] = None,
         environ: Optional[Mapping[str, str]] = None) -> Config:
    """Resolve the configuration from defaults, file, environment and flags."""
    environ = os.environ if environ is None else environ
    resolved = environ.get(RESOLVED_ENV)
    if resolved:
        return Config(json.loads(resolved))

    values = {attr_name(s.key): s.default for s in SCHEMA}
    path = getattr(args, "config", None) or environ.get(CONFIG_ENV)
    if path is None and os.path.exists(DEFAULT_CONFIG_FILE):
        path = DEFAULT_CONFIG_FILE
    if path:
        try:
            with open(path, "rb") as fh:
                table = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        for key, value in _flatten(table):
            setting = SETTINGS.get(key)
            if setting is None:
                raise ConfigError(f"{key} ({path}): unknown setting")
            values[attr_name(key)] = _coerce(setting, value, path)

    for setting in SCHEMA:
        name = env_name(setting.key)
        if name in environ:
            values[attr_name(setting.key)] = _coerce(setting, environ[name], name)

    if args is not None:
        for setting in SCHEMA:
            value = getattr(args, "cfg_" + attr_name(setting.key), None)
            if value is not None:
                values[attr_name(setting.key)] = _coerce(setting, value, flag_name(setting.key))
    return _finish(values)


def from_command_line(prog: str, description: str, argv: Optional[Sequence[str]],
                      extra: Optional[Callable[[argparse.ArgumentParser], Any]] = None
                      ) -> Tuple[argparse.Namespace, Config]:
    """Parse an actor's command line; on a bad setting print one line and exit 2."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    if extra is not None:
        extra(parser)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return args, load(args)
    except ConfigError as exc:
        print(f"{prog}: config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def defaults() -> Config:
    """The defaults alone, ignoring files and environment (for tests and docs)."""
    return _finish({attr_name(s.key): s.default for s in SCHEMA})
