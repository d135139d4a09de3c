"""The layers of a configuration, each value with where it came from.

A library of ``agg.config`` (whose ``load`` calls ``resolve``) and of ``agg
config show|check``. Every problem is collected, not only the first, each as
one line naming its key and where the value came from, so that one run of
``agg config check`` shows all there is to fix.

Origins: ``default``, ``file PATH``, ``env AGG_X``, ``flag --x``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any, Dict, Iterable, List, Mapping, Optional, Set, Tuple

from .config import CONFIG_ENV, DEFAULT_CONFIG_FILE, SCHEMA, SETTINGS, ConfigError, Setting, \
    dest_name, env_name, flag_name

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


@dataclasses.dataclass
class Layers:
    values: Dict[str, Any]
    origins: Dict[str, str]
    problems: List[str]
    file: Optional[str] = None


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


def cross_checks(values: Mapping[str, Any], bad: Iterable[str]) -> List[str]:
    """Problems between keys, for keys whose own values are good."""
    problems = []
    bad = set(bad)
    # Children beat every second: a shorter wait would kill healthy ones between beats.
    hang = values["supervisor.hang_s"]
    if "supervisor.hang_s" not in bad and 0 < hang < 2:
        problems.append(f"supervisor.hang_s: must be 0 (never) or at least 2, got {hang:g}")
    # A worker sends a snapshot every heartbeat (give or take its 100 ms tick); a window not
    # well above that reports healthy workers down between two of their snapshots.
    if not bad & {"stats.stale_after_s", "stats.heartbeat_s"} \
            and values["stats.stale_after_s"] < 2 * values["stats.heartbeat_s"]:
        problems.append(f"stats.stale_after_s: must be at least twice stats.heartbeat_s "
                        f"({values['stats.heartbeat_s']:g}), got {values['stats.stale_after_s']:g}")
    if not bad & {"data_dir", "run_dir", "workers"}:
        problems.extend(_long_ipc_paths(values, bad))
    return problems


# An ipc:// path is a Unix socket's address: at most 107 bytes on Linux (sun_path).
MAX_IPC_PATH = 107


def _long_ipc_paths(values: Mapping[str, Any], bad: Set[str]) -> List[str]:
    """ipc:// endpoints whose path would be too long to bind or connect (a deep
    run_dir, say), named before any process fails on it."""
    run_dir = os.path.abspath(values["run_dir"] or os.path.join(os.path.abspath(values["data_dir"]), "run"))
    problems = []
    for key, template in values.items():
        if not key.startswith("endpoints.") or key in bad or not str(template).startswith("ipc://"):
            continue
        try:
            path = str(template)[len("ipc://"):].format(run_dir=run_dir, index=values["workers"] - 1)
        except (KeyError, IndexError, ValueError):
            continue
        if len(path.encode()) > MAX_IPC_PATH:
            problems.append(f"{key}: the socket path {path} is {len(path.encode())} bytes, over the "
                            f"{MAX_IPC_PATH} a Unix socket allows; set a shorter run_dir")
    return problems


def _file_layer(path: str, layers: Layers, bad: List[str]) -> None:
    try:
        with open(path, "rb") as fh:
            table = tomllib.load(fh)
    except OSError as exc:
        layers.problems.append(f"config file {path}: {exc.strerror}")
        return
    except tomllib.TOMLDecodeError as exc:
        layers.problems.append(f"config file {path}: {exc}")
        return
    for key, value in _flatten(table):
        found = SETTINGS.get(key)
        if found is None:
            layers.problems.append(f"{key} ({path}): unknown setting")
        else:
            _take(layers, found, value, f"file {path}", path, bad)


def _take(layers: Layers, setting: Setting, value: Any, origin: str, shown: str, bad: List[str]) -> None:
    try:
        layers.values[setting.key] = _coerce(setting, value, shown)
        layers.origins[setting.key] = origin
    except ConfigError as exc:
        layers.problems.extend(exc.problems)
        bad.append(setting.key)  # reported even if a higher layer sets it well


def resolve(args: Optional[argparse.Namespace], environ: Mapping[str, str]) -> Layers:
    """Defaults, then the file, the environment and the flags, lowest first."""
    layers = Layers({s.key: s.default for s in SCHEMA}, {s.key: "default" for s in SCHEMA}, [])
    bad: List[str] = []
    path = getattr(args, "config", None) or environ.get(CONFIG_ENV)
    if path is None and os.path.exists(DEFAULT_CONFIG_FILE):
        path = DEFAULT_CONFIG_FILE
    if path:
        layers.file = path
        _file_layer(path, layers, bad)
    for s in SCHEMA:
        name = env_name(s.key)
        if name in environ:
            _take(layers, s, environ[name], f"env {name}", name, bad)
    if args is not None:
        for s in SCHEMA:
            value = getattr(args, dest_name(s.key), None)
            if value is not None:
                _take(layers, s, value, f"flag {flag_name(s.key)}", flag_name(s.key), bad)
    layers.problems.extend(cross_checks(layers.values, bad))
    return layers
