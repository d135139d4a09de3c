"""Events from a JSON-lines file, for ``agg-publish --from FILE|-``."""

from __future__ import annotations

import json
from typing import IO, Any, Dict, List


class BadLine(ValueError):
    """A line that is not one JSON object; the message names its number."""


def read_events(stream: IO[str], name: str) -> List[Dict[str, Any]]:
    """One event object per line; blank lines are skipped. agg checks the
    fields; this only makes sure each line is an object, to name the line."""
    events: List[Dict[str, Any]] = []
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BadLine(f"{name}, line {number}: not JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(event, dict):
            raise BadLine(f"{name}, line {number}: not a JSON object but {type(event).__name__}")
        events.append(event)
    return events
