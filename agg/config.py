"""Configuration: one schema, three layers, typed where it is read.

Every setting is a field of one frozen dataclass below, its section's
(``Limits.max_body_bytes`` is the setting ``limits.max_body_bytes``), with
its type, default and help. ``SCHEMA`` is derived from those fields, so the
classes are the single source; code reads ``config.limits.max_body_bytes``
and mypy knows it is an int. Values come from, lowest to highest priority:

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
import typing
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

if sys.version_info >= (3, 11):
    pass
else:
    pass

RESOLVED_ENV = "AGG_RESOLVED_CONFIG"
CONFIG_ENV = "AGG_CONFIG"
DEFAULT_CONFIG_FILE = os.path.join("conf", "agg.toml")

MIB = 1024 * 1024


def setting(default: Any, help: str, *, choices: Tuple[str, ...] = (),
            minimum: Optional[float] = None) -> Any:
    """A field of a section: its default, and what ``SCHEMA`` says of it."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices,
                                                        "minimum": minimum})


@dataclasses.dataclass(frozen=True)
class Http:
    enabled: bool = setting(True, "run the HTTP front")
    host: str = setting("127.0.0.1", "address the HTTP front binds")
    port: int = setting(8080, "port the HTTP front binds (0: any free port)", minimum=0)
    publish_token: str = setting(
        "", "bearer token POST /publish requires (empty: none; prefer AGG_HTTP_PUBLISH_TOKEN)")
    read_token: str = setting("", "bearer token GET /events, GET /stats and GET /metrics require "
                                  "(empty: none)")
    max_connections: int = setting(
        1024, "connections the front keeps at once; past it a request gets 503 and its connection "
              "is closed", minimum=1)
    max_publishes: int = setting(
        512, "POST /publish requests the front holds at once (read, checked or awaiting commit); "
             "past it: 503 before the body is read", minimum=1)
    header_timeout_s: float = setting(
        10.0, "a connection that has not sent a request's head this long after it opened, or "
              "after its last answer, is closed", minimum=0.1)
    metrics_max_topics: int = setting(
        50, "topics GET /metrics labels one by one, the most received first; the others are summed "
            "under topic=\"__other__\" (a publisher chooses topics: this bounds the series)", minimum=0)
    body_timeout_s: float = setting(
        5.0, "a request body not complete this long after its head (or, once begun, after its "
             "first bytes) gets 408, and its connection is closed", minimum=0.1)


@dataclasses.dataclass(frozen=True)
class Ingest:
    enabled: bool = setting(True, "run the native ZeroMQ ingest")
    endpoint: str = setting("tcp://127.0.0.1:5555",
                            "endpoint the native ingest binds (tcp://HOST:0 picks a free port)")
    curve_secret_key: str = setting(
        "", "file with the ingest's CURVE key pair (zmq.auth format); empty: no CURVE")
    curve_clients_dir: str = setting("", "directory of allowed client public keys (zmq.auth format)")
    max_batches: int = setting(
        64, "batches the ingest holds at once (checked or awaiting commit); past it: ERR overload",
        minimum=1)


@dataclasses.dataclass(frozen=True)
class Endpoints:
    worker: str = setting("ipc://{run_dir}/w{index}.sock",
                          "endpoint of worker INDEX; {run_dir} and {index} are filled in")
    worker_bind: str = setting("", "what worker INDEX binds, if not endpoints.worker "
                                   "(e.g. tcp://0.0.0.0:7000 in a container)")
    stats_in: str = setting("ipc://{run_dir}/stats-in.sock",
                            "endpoint where the stats process collects counter snapshots")
    stats_in_bind: str = setting("", "what the stats process binds, if not endpoints.stats_in")
    stats: str = setting("ipc://{run_dir}/stats.sock", "endpoint where the stats process answers queries")
    stats_bind: str = setting("", "what the stats process binds, if not endpoints.stats")
    control: str = setting("ipc://{run_dir}/control.sock",
                           "endpoint where the supervisor collects READY messages")
    ctl: str = setting("ipc://{run_dir}/ctl.sock",
                       "endpoint where the supervisor answers agg ctl (status, restart, stop); "
                       "it has no authentication: keep it on ipc://")


@dataclasses.dataclass(frozen=True)
class Limits:
    max_body_bytes: int = setting(16 * MIB, "largest HTTP request body", minimum=1)
    max_frame_bytes: int = setting(16 * MIB, "largest native ingest message", minimum=1)
    max_batch_events: int = setting(10000, "most events in one request or batch", minimum=1)
    max_field_chars: int = setting(256, "longest topic, event_id or source, in characters", minimum=1)
    max_payload_bytes: int = setting(64 * 1024, "largest payload, encoded as JSON", minimum=2)
    max_events_page: int = setting(10000, "largest page of GET /events", minimum=1)
    max_inflight_events: int = setting(
        100000, "most events an edge sends one worker and has not seen acknowledged; past it: 503 "
                "(the bound in use is smaller when the worker is slower, see limits.queue_s)", minimum=1)
    max_inflight_bytes: int = setting(
        64 * MIB, "most bytes of events an edge sends one worker and has not seen acknowledged; "
                  "past it: 503", minimum=1)
    queue_s: float = setting(
        0.3, "how long an admitted event may wait for its worker: an edge gives each worker no more "
             "than it measured it commits in this time; past it: 503", minimum=0.01)
    max_reading_bytes: int = setting(
        64 * MIB, "most bytes of request bodies (or native batches) an edge holds at once, being "
                  "read, checked or awaiting commit; past it: 503 before a body is read", minimum=1)
    max_lag_s: float = setting(
        0.02, "while an edge holds a publish, the most its event loop may run behind (it is "
              "saturated), or have ahead in batches to decode; past it: 503 (ERR overload) at once",
        minimum=0.001)
    ack_timeout_s: float = setting(
        10.0, "how long the front waits for a worker's commit before answering 503", minimum=0.01)
    stall_s: float = setting(
        0.5, "a worker silent this long with requests pending is stalled: 503 until it answers",
        minimum=0.01)
    retry_after_s: int = setting(1, "Retry-After sent with a 503", minimum=0)


@dataclasses.dataclass(frozen=True)
class Storage:
    synchronous: str = setting(
        "GROUP", "when an acknowledged event reaches the disk. GROUP: each shard commits without "
                 "an fsync, then the worker fsyncs the WAL files its group wrote, side by side, "
                 "before any answer (durable against a power cut); FULL, EXTRA: SQLite fsyncs at "
                 "each shard's commit (as durable, slower); NORMAL: no fsync before the answer "
                 "(survives a crash of agg, not of the machine)",
        choices=("GROUP", "FULL", "EXTRA", "NORMAL"))
    group_max_events: int = setting(5000, "most events a worker commits in one group commit", minimum=1)
    cache_mib: int = setting(64, "SQLite page cache per shard, in MiB", minimum=1)
    wal_autocheckpoint: int = setting(
        16000, "WAL pages after which a commit also checkpoints, staggered 0.75-1.25x across a "
               "worker's shards: a backstop, since a thread of the worker checkpoints every 0.2 s",
        minimum=0)
    index_save_rows: int = setting(
        100_000, "rows a shard may add before its key index file is saved again; a start reads "
                 "at most these rows per shard to catch up (idle workers save sooner)", minimum=1)


@dataclasses.dataclass(frozen=True)
class Stats:
    publish_interval_s: float = setting(
        0.0, "least time between two counter snapshots of a worker (0: after every commit)", minimum=0.0)
    heartbeat_s: float = setting(0.5, "a worker sends its snapshot at least this often", minimum=0.01)
    stale_after_s: float = setting(
        3.0, "a worker silent this long is reported down (at least twice stats.heartbeat_s)", minimum=0.01)


@dataclasses.dataclass(frozen=True)
class Supervisor:
    ready_timeout_s: float = setting(
        30.0, "how long a child may go silent before it says READY (a worker loading keys beats)",
        minimum=0.1)
    grace_s: float = setting(10.0, "how long a child may take to stop before SIGKILL", minimum=0.0)
    hang_s: float = setting(30.0, "a child whose loop has not turned for this long is killed and "
                                  "restarted (0: never; else at least 2, children beat every second)",
                            minimum=0.0)
    max_restarts: int = setting(
        5, "failed starts of one child (deaths before it has been READY for a second) within "
           "restart_window_s before the supervisor gives up; a child that dies after is restarted "
           "at once", minimum=0)
    restart_window_s: float = setting(60.0, "window of max_restarts", minimum=0.1)


@dataclasses.dataclass(frozen=True)
class Config:
    """The resolved configuration: the top-level settings, then one typed view per section."""

    data_dir: str = setting("./data", "directory of the SQLite shards; created if missing")
    run_dir: str = setting("", "directory of ipc:// sockets and run files (default: DATA_DIR/run)")
    partitions: int = setting(8, "partition count, fixed when the data directory is created", minimum=1)
    workers: int = setting(2, "number of dedup worker processes", minimum=1)
    log_level: str = setting("info", "log level of every process",
                             choices=("debug", "info", "warning", "error"))
    log_format: str = setting("text", "log lines of every process: text (time level role pid message) or "
                                      "json (one object a line: time, level, role, pid, message)",
                              choices=("text", "json"))
    http: Http = dataclasses.field(default_factory=Http)
    ingest: Ingest = dataclasses.field(default_factory=Ingest)
    endpoints: Endpoints = dataclasses.field(default_factory=Endpoints)
    limits: Limits = dataclasses.field(default_factory=Limits)
    storage: Storage = dataclasses.field(default_factory=Storage)
    stats: Stats = dataclasses.field(default_factory=Stats)
    supervisor: Supervisor = dataclasses.field(default_factory=Supervisor)

    def get(self, key: str) -> Any:
        """The value of a dotted key (``"http.port"``)."""
        section, _, name = key.rpartition(".")
        return getattr(getattr(self, section) if section else self, name)

    def endpoint(self, key: str, index: int = 0) -> str:
        template: str = getattr(self.endpoints, key)
        return template.format(run_dir=self.run_dir, index=index)

    def bind_endpoint(self, key: str, index: int = 0) -> str:
        """What the owner of endpoint ``key`` binds: ``endpoints.KEY_bind`` if set
        (a container binds 0.0.0.0 while peers connect to its name), else ``endpoints.KEY``."""
        template: str = getattr(self.endpoints, key + "_bind") or getattr(self.endpoints, key)
        return template.format(run_dir=self.run_dir, index=index)

    def worker_endpoints(self) -> List[str]:
        return [self.endpoint("worker", i) for i in range(self.workers)]

    def flat(self) -> Dict[str, Any]:
        """Every setting by its dotted key."""
        return {s.key: self.get(s.key) for s in SCHEMA}

    def to_json(self) -> str:
        return json.dumps(self.flat())

    def replace(self, changes: Mapping[str, Any]) -> "Config":
        """A copy with the values of some dotted keys changed."""
        values = self.flat()
        for key, value in changes.items():
            if key not in values:
                raise KeyError(key)
            values[key] = value
        return _build(values)


@dataclasses.dataclass(frozen=True)
class Setting:
    key: str
    type: type
    default: Any
    help: str
    choices: Tuple[str, ...] = ()
    minimum: Optional[float] = None


def _settings_of(cls: type, prefix: str) -> Iterable[Setting]:
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        kind = hints[field.name]
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            yield from _settings_of(kind, field.name + ".")
        else:
            yield Setting(prefix + field.name, kind, field.default, field.metadata["help"],
                          field.metadata["choices"], field.metadata["minimum"])


SCHEMA: Tuple[Setting, ...] = tuple(_settings_of(Config, ""))
SETTINGS: Dict[str, Setting] = {s.key: s for s in SCHEMA}
SECTIONS: Dict[str, type] = {f.name: typing.get_type_hints(Config)[f.name] for f in dataclasses.fields(Config)
                             if dataclasses.is_dataclass(typing.get_type_hints(Config)[f.name])}


def _build(values: Mapping[str, Any]) -> Config:
    """A Config from every setting's value, by dotted key."""
    top: Dict[str, Any] = {}
    sections: Dict[str, Dict[str, Any]] = {name: {} for name in SECTIONS}
    for key, value in values.items():
        section, _, name = key.rpartition(".")
        (sections[section] if section else top)[name] = value
    return Config(**top, **{name: SECTIONS[name](**fields) for name, fields in sections.items()})


class ConfigError(Exception):
    """Bad configuration values: ``problems`` holds one line per problem, each
    naming its key; the message is them all, joined by "; "."""

    def __init__(self, problems: "str | Sequence[str]") -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


def env_name(key: str) -> str:
    return "AGG_" + key.replace(".", "_").upper()


def flag_name(key: str) -> str:
    return "--" + key.replace(".", "-").replace("_", "-")


def dest_name(key: str) -> str:
    return "cfg_" + key.replace(".", "_")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and one flag per setting to ``parser``."""
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file")
    group = parser.add_argument_group("settings (flag > AGG_* environment > TOML file > default)")
    for s in SCHEMA:
        group.add_argument(flag_name(s.key), dest=dest_name(s.key), metavar=s.type.__name__.upper(),
                           default=None, help=f"{s.help} [{s.default!r}]")


def load(args: Optional[argparse.Namespace] = None,
         environ: Optional[Mapping[str, str]] = None) -> Config:
    """Resolve the configuration from defaults, file, environment and flags;
    ConfigError listing every problem (each naming its key) if any."""
    environ = os.environ if environ is None else environ
    resolved = environ.get(RESOLVED_ENV)
    if resolved:
        return _build(json.loads(resolved))
    from .configload import resolve  # the layers, with where each value came from
    layers = resolve(args, environ)
    if layers.problems:
        raise ConfigError(layers.problems)
    return finish(layers.values)


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
        print_errors(prog, exc)
        raise SystemExit(2) from None


def print_errors(prog: str, exc: ConfigError) -> None:
    """One line per problem on stderr."""
    for problem in exc.problems:
        print(f"{prog}: config error: {problem}", file=sys.stderr)


def finish(values: Dict[str, Any]) -> Config:
    """The Config of checked ``values``: paths made absolute, run_dir defaulted."""
    values = dict(values)
    values["data_dir"] = os.path.abspath(values["data_dir"])
    if not values["run_dir"]:
        values["run_dir"] = os.path.join(values["data_dir"], "run")
    values["run_dir"] = os.path.abspath(values["run_dir"])
    return _build(values)


def defaults() -> Config:
    """The defaults alone, ignoring files and environment (for tests and docs)."""
    return finish({s.key: s.default for s in SCHEMA})
