"""The cursor of ``GET /events``: where a listing stands in each partition.

A cursor is the per-partition positions (``{partition: seq}``) after the last
event of a page, msgpack-encoded and base64url'd without padding. It stays
valid forever: seqs only grow, so polling with the last cursor returns only
the events committed since.
"""

from __future__ import annotations

import base64
import binascii
from typing import Dict

import msgspec

from .. import protocol

_POSITION = msgspec.msgpack.Decoder(Dict[int, int])


def encode_cursor(position: Dict[int, int]) -> str:
    return base64.urlsafe_b64encode(protocol.pack(position)).decode().rstrip("=")


def decode_cursor(text: str) -> Dict[int, int]:
    """The per-partition positions of a cursor, or ValueError."""
    try:
        position = _POSITION.decode(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise ValueError("not a cursor returned by GET /events") from None
    if not all(k >= 0 and v >= 0 for k, v in position.items()):
        raise ValueError("not a cursor returned by GET /events")
    return position
