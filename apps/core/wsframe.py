"""WebSocket framing (RFC 6455) for frames the server builds once and writes to many sockets.

Imports nothing from the project: chatproject.serve (the daphne hook) and the messaging runtime
both use it.
"""

from __future__ import annotations


def text_frame(payload: bytes) -> bytes:
    """One unmasked, unfragmented server-to-client text frame (RFC 6455 §5.2)."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 65536:
        return bytes((0x81, 126)) + size.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + size.to_bytes(8, "big") + payload


def frame_payload(frame: bytes) -> bytes:
    """The payload of a frame made by text_frame."""
    size = frame[1]
    return frame[2 + (2 if size == 126 else 8 if size == 127 else 0) :]
