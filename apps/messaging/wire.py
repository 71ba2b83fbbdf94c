"""The WebSocket protocol's frame fields (PROTOCOL §3): refs, ids, seqs, and the one `pong`."""

from __future__ import annotations

import json

from apps.core.errors import invalid
from apps.core.wsframe import text_frame
from apps.events.fanout import serialize

REF_MAX = 200  # characters of a frame's `ref`
PONG = text_frame(serialize({"type": "pong", "ref": None}).encode())


def valid_ref(ref) -> bool:
    return ref is None or (isinstance(ref, str) and len(ref) <= REF_MAX)


def frame_id(frame: dict, name: str, *, required: bool = True) -> int | None:
    """frame[name] as a positive integer id (None if absent and not required)."""
    value = frame.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value > 2**62:
        raise invalid(f"{name} must be a positive integer id")
    return value


def frame_seq(frame: dict, name: str, *, required: bool = True) -> int | None:
    """frame[name] as a non-negative seq (None if absent and not required)."""
    value = frame.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value > 2**62:
        raise invalid(f"{name} must be a non-negative integer")
    return value


def encodable(value) -> bool:
    """False if a string in `value` holds a lone surrogate: JSON escapes can spell one
    ("\\ud800"), text no UTF-8 can carry; refused before it reaches a reply, the database or
    another socket."""
    try:
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return False
    return True
