"""tox's inline plugin: plain ``tox`` runs every environment that CI runs.

- The other Pythons of this machine image live under pyenv, whose shims
  answer only for the selected version: their own ``bin`` directories
  (``$PYENV_ROOT/versions/3.1X.*/bin``) go at the end of ``PATH``, where tox's
  interpreter discovery finds ``python3.10``, ``python3.12``, ``python3.13``.
  ``python3`` stays the one first on ``PATH``.
- Under CI (``CI`` set to anything but ``0``/``false``), a missing
  interpreter fails the run instead of being skipped, so that CI can never go
  green on fewer environments than it names; ``--skip-missing-interpreters``
  on the command line still wins.
"""

from __future__ import annotations

import glob
import os

from tox.config.loader.memory import MemoryLoader
from tox.config.sets import CoreConfigSet
from tox.plugin import impl
from tox.session.state import State


def pyenv_bins() -> list:
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    return sorted(glob.glob(os.path.join(root, "versions", "3.1[0-9].*", "bin")))


def on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@impl
def tox_add_core_config(core_conf: CoreConfigSet, state: State) -> None:
    path = os.environ.get("PATH", "").split(os.pathsep)
    os.environ["PATH"] = os.pathsep.join(path + [b for b in pyenv_bins() if b not in path])
    if on_ci():
        core_conf.loaders.insert(0, MemoryLoader(skip_missing_interpreters=False))
