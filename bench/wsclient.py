"""A lean RFC 6455 WebSocket client on asyncio, for the load generators.

The generators share two cores with the server they measure, so every microsecond spent per
frame on the client is taken from the server. This client does the handshake itself, parses
server frames (unmasked by the RFC) straight out of one buffer, hands text payloads to a plain
callback as bytes, and masks outgoing frames with the C helper from `websockets`. It answers
pings and reports the close code; that is all a chat client needs. No compression is offered.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct

try:
    from websockets.speedups import apply_mask
except ImportError:  # pure-Python fallback: XOR through big integers (still C speed)

    def apply_mask(data: bytes, mask: bytes) -> bytes:
        if not data:
            return b""
        n = len(data)
        key = (mask * (n // 4 + 1))[:n]
        return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class HandshakeError(Exception):
    pass


def frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked client frame."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0xFE, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0xFF, n)
    return header + mask + apply_mask(payload, mask)


class WebSocket(asyncio.Protocol):
    """One client socket. Set `on_text(payload: bytes)` to receive text frames."""

    def __init__(self, on_text=None):
        loop = asyncio.get_running_loop()
        self.on_text = on_text or (lambda payload: None)
        self.transport = None
        self.upgraded = False
        self.buffer = bytearray()
        self.fragments: list[bytes] = []
        self.handshake = loop.create_future()
        self.closed = loop.create_future()
        self.close_code: int | None = None

    # --- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        if not self.handshake.done():
            self.handshake.set_exception(HandshakeError(f"connection lost: {exc}"))
        if not self.closed.done():
            self.closed.set_result(self.close_code)

    def data_received(self, data):
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end])
            del self.buffer[: end + 4]
            status = head.split(b"\r\n", 1)[0]
            if status.split(b" ")[1:2] != [b"101"]:
                self.handshake.set_exception(HandshakeError(status.decode("latin-1")))
                self.transport.close()
                return
            self.upgraded = True
            self.handshake.set_result(None)
        self._parse()

    def _parse(self):
        buf = self.buffer
        n = len(buf)
        pos = 0
        while n - pos >= 2:
            b0 = buf[pos]
            length = buf[pos + 1] & 0x7F
            start = pos + 2
            if length == 126:
                if n - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                start = pos + 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                start = pos + 10
            end = start + length
            if end > n:
                break
            payload = bytes(buf[start:end])
            pos = end
            opcode = b0 & 0x0F
            if opcode == OP_TEXT or opcode == OP_BINARY:
                if b0 & 0x80:
                    self.on_text(payload)
                else:
                    self.fragments = [payload]
            elif opcode == OP_CONT:
                self.fragments.append(payload)
                if b0 & 0x80:
                    whole, self.fragments = b"".join(self.fragments), []
                    self.on_text(whole)
            elif opcode == OP_PING:
                self.transport.write(frame(OP_PONG, payload))
            elif opcode == OP_CLOSE:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                if not self.transport.is_closing():
                    self.transport.write(frame(OP_CLOSE, payload[:2]))
                    self.transport.close()
        if pos:
            del buf[:pos]

    # --- sending ---------------------------------------------------------------------------------
    def send_text(self, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame(OP_TEXT, payload))

    def close(self, code: int = 1000) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame(OP_CLOSE, code.to_bytes(2, "big")))
            self.transport.close()

    @property
    def is_open(self) -> bool:
        return self.upgraded and not self.closed.done()


async def connect(
    host: str,
    port: int,
    *,
    path: str = "/ws/",
    token: str | None = None,
    on_text=None,
    timeout: float = 20.0,
) -> WebSocket:
    """Open a socket and finish the handshake (Origin and `Authorization: Token` headers)."""
    loop = asyncio.get_running_loop()
    transport, ws = await asyncio.wait_for(
        loop.create_connection(lambda: WebSocket(on_text), host, port), timeout
    )
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        f"Origin: http://{host}:{port}",
    ]
    if token:
        lines.append(f"Authorization: Token {token}")
    transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    try:
        await asyncio.wait_for(ws.handshake, timeout)
    except BaseException:
        transport.abort()
        raise
    return ws


class Inbox:
    """Collects parsed frames during setup (hello, subscribed); swap `on_text` afterwards."""

    def __init__(self):
        self.queue: asyncio.Queue = asyncio.Queue()

    def __call__(self, payload: bytes):
        self.queue.put_nowait(payload)

    async def expect(self, predicate, timeout: float = 20.0) -> dict:
        """The first frame (as a dict) for which predicate(frame) is true; others are dropped."""
        import json

        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError("expected frame did not arrive")
            message = json.loads(await asyncio.wait_for(self.queue.get(), remaining))
            if message.get("type") == "error" and not predicate(message):
                raise RuntimeError(f"server error: {message}")
            if predicate(message):
                return message
