"""Text from publishers made safe for an operator's terminal, and cut to it.

A topic name is whatever a publisher sent: an escape sequence in it would
retitle, recolour or scroll the terminal of whoever prints it. ``visible``
writes every control and format character as a Python escape (``\\x1b``,
``\\u202e``), so that what is shown is all printable and says what was sent;
``fit`` cuts printable text to a number of terminal columns.
"""

from __future__ import annotations

import unicodedata

# Control, format (bidi overrides, zero-width), separators that break lines,
# surrogates and unassigned: nothing of these is drawn as itself.
UNSAFE_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}
ELLIPSIS = "~"  # ASCII, whatever the terminal's encoding


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def visible(text: str) -> str:
    """``text`` with every character a terminal would act on, rather than draw, escaped."""
    if text.isprintable() and text.isascii():
        return text  # PERF: the usual topic name, checked in C
    return "".join(_escape(c) if unicodedata.category(c) in UNSAFE_CATEGORIES else c for c in text)


def _columns(char: str) -> int:
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def width(text: str) -> int:
    """Terminal columns of printable ``text`` (wide East Asian characters take two)."""
    return len(text) if text.isascii() else sum(map(_columns, text))


def fit(text: str, columns: int) -> str:
    """Printable ``text`` cut to ``columns``, ending in ``~`` where it was cut."""
    if width(text) <= columns:
        return text
    out, used = [], 0
    for char in text:
        used += _columns(char)
        if used > columns - len(ELLIPSIS):
            break
        out.append(char)
    return "".join(out) + ELLIPSIS if columns >= len(ELLIPSIS) else ""
