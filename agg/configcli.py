"""``agg config show|check``: the effective configuration, and whether it is valid.

``show`` prints the configuration that ``agg run`` with the same flags,
environment and file would use, as TOML (the format of ``conf/agg.toml``),
each key followed by where its value came from: ``default``, ``file PATH``,
``env AGG_X`` or ``flag --x``. Tokens are masked. ``check`` prints ``ok`` and
exits 0, or one line per problem, each naming its key, and exits 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from . import conffile
from . import config as configmod
from .configload import resolve

SECRETS = ("http.publish_token", "http.read_token")
HEADER = """\
# The effective configuration of agg (agg config show). After each value: where it came
# from, lowest to highest priority: default, file PATH, env AGG_X, flag --x. This text is
# a valid configuration file (tokens masked).
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="agg config", description=(
        "show: the effective configuration as TOML, with where each value came from; "
        "check: 'ok', or every problem, one line each."))
    p.add_argument("action", choices=("show", "check"))
    configmod.add_arguments(p)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    environ = {k: v for k, v in os.environ.items() if k != configmod.RESOLVED_ENV}
    layers = resolve(args, environ)
    if layers.problems:
        configmod.print_errors("agg", configmod.ConfigError(layers.problems))
        return 2
    if args.action == "check":
        print("ok")
        return 0
    values = configmod.finish(layers.values).flat()
    for key in SECRETS:
        if values[key]:
            values[key] = "********"
    sys.stdout.write(conffile.render(values, note=lambda key: layers.origins[key],
                                     header=HEADER))
    return 0
