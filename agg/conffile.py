"""The TOML text of a configuration: ``conf/agg.toml`` is this module's output.

Every setting is written under its section with its help as a comment, so
the file shipped in the repository lists every key with its default and
cannot drift from ``config.SCHEMA`` (a test compares the two).
``python -m agg.conffile > conf/agg.toml`` writes it again after a change.
"""

import json
import textwrap
from typing import Any, Callable, Dict, List, Optional

from agg import config as configmod

HEADER = """\
# agg configuration. Every key here is also an AGG_* environment variable
# (http.port -> AGG_HTTP_PORT) and a flag of `agg run` (--http-port), which win
# over this file in that order. The values below are the defaults.
"""


def toml_value(value: Any) -> str:
    """One TOML scalar; JSON's string escapes are TOML's basic-string escapes."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


def render(values: Optional[Dict[str, Any]] = None,
           note: Optional[Callable[[str], str]] = None, header: str = HEADER) -> str:
    """The file for ``values`` (default: the defaults), one comment per key.

    ``note(key)``, if given, is appended to a key's line as a comment (``agg
    config show`` says there where each value came from).
    """
    values = values if values is not None else {s.key: s.default for s in configmod.SCHEMA}
    lines: List[str] = [header]
    section = ""
    for setting in configmod.SCHEMA:
        head, _, name = setting.key.rpartition(".")
        if head != section:
            section = head
            lines.append(f"\n[{section}]")
        lines.extend(textwrap.wrap(setting.help, 96, initial_indent="# ", subsequent_indent="# "))
        line = f"{name} = {toml_value(values[setting.key])}"
        lines.append(f"{line}  # {note(setting.key)}" if note else line)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
