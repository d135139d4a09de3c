"""What every agg command-line tool does alike: ``--version``, help text
without reST markup, and the ends a shell expects of a tool: Ctrl-C exits 130
with no traceback, and a reader that closes the pipe early (``| head``) ends
it quietly."""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Callable, Optional, Sequence

from .. import __version__

INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports when the reader went away


def plain(text: str) -> str:
    """A docstring's text for a terminal: ``name`` becomes name."""
    return re.sub(r"``([^`]*)``", r"\1", text)


def parser_for(prog: str, doc: str) -> argparse.ArgumentParser:
    """A parser whose description is the first paragraph of ``doc``, with ``--version``."""
    parser = argparse.ArgumentParser(prog=prog, description=plain(doc.split("\n\n")[0]))
    parser.add_argument("--version", action="version", version=f"{prog} (agg) {__version__}")
    return parser


def guard(main: Callable[[Optional[Sequence[str]]], int], argv: Optional[Sequence[str]]) -> int:
    """Run a tool's ``main``: Ctrl-C anywhere is exit 130, a closed stdout is exit 141,
    neither with a traceback."""
    try:
        status = main(argv)
        # A block-buffered stdout (a pipe, without PYTHONUNBUFFERED) meets a closed
        # pipe here, where it can be handled, rather than at the interpreter's exit.
        sys.stdout.flush()
        return status
    except KeyboardInterrupt:
        return INTERRUPTED
    except BrokenPipeError:
        # The interpreter flushes stdout once more at exit; to a pipe with no reader
        # that fails again and prints "Exception ignored". Point stdout at /dev/null.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return BROKEN_PIPE


def say(prog: str, message: str) -> None:
    """One line on stderr, named after the tool, as Unix tools do."""
    sys.stderr.write(f"{prog}: {message}\n")
    sys.stderr.flush()
