"""The ``agg`` command: ``agg run`` starts the whole system under the supervisor;
``agg front|worker|stats|ingest`` run one actor alone (for topologies where
workers live on other hosts or in their own containers)."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from . import __version__
from . import config as configmod
from . import lifecycle

ACTORS = ("front", "worker", "stats", "ingest")


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "ctl":
        from . import ctl
        return ctl.main(argv[1:])
    if argv and argv[0] == "config":
        from . import configcli
        return configcli.main(argv[1:])
    if argv and argv[0] in ACTORS:
        module = importlib.import_module(f"agg.{argv[0]}")
        status: int = module.main(argv[1:])
        return status
    parser = argparse.ArgumentParser(prog="agg", description=(
        "agg: an event aggregator with exact, durable dedup. "
        "'agg run' starts everything; 'agg front|worker|stats|ingest --help' runs one actor; "
        "'agg ctl --help' controls a running one."))
    parser.add_argument("--version", action="version", version=f"agg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run_parser = sub.add_parser("run", help="start the supervisor and every process")
    configmod.add_arguments(run_parser)
    for actor in ACTORS:
        sub.add_parser(actor, help=f"run the {actor} process alone", add_help=False)
    sub.add_parser("ctl", help="status, restart CHILD, stop: control a running agg", add_help=False)
    sub.add_parser("config", help="show: the effective configuration and where each value came "
                                  "from; check: ok or every problem", add_help=False)
    args = parser.parse_args(argv)
    if args.command != "run":
        parser.print_help()
        return 2
    try:
        config = configmod.load(args)
    except configmod.ConfigError as exc:
        configmod.print_errors("agg", exc)
        return 2
    lifecycle.setup_logging("supervisor", config.log_level, config.log_format)
    from . import supervisor
    return supervisor.run(config)
