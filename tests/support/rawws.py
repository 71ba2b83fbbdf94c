"""A raw WebSocket client over a plain TCP socket: it sends what it likes and reads only when
told to, so a test can be the client that never reads, or send a frame no library would."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct


def client_frame(payload: bytes, opcode: int = 0x1, *, zero_mask: bool = False) -> bytes:
    """A masked client frame (RFC 6455 §5.3). An all-zero mask is a valid mask that leaves the
    payload as it is: cheap to build for big or many frames."""
    mask = b"\0\0\0\0" if zero_mask else os.urandom(4)
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if any(mask) else payload
    return header + mask + masked


class RawSocket:
    def __init__(
        self, server, *, token: str, rcvbuf: int | None = 256 * 1024, timeout: float = 15.0
    ):
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
        # A small receive window (but over two loopback MSS, or window updates stall): what the
        # server sends piles up on its side.
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                "GET /ws/ HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{server.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Origin: http://127.0.0.1:{server.port}\r\n"
                f"Authorization: Token {token}\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head
        self.buffer = b""

    def start_reading(self, timeout: float = 15.0) -> None:
        self.sock.settimeout(timeout)

    def send_frame(self, payload: bytes, opcode: int = 0x1) -> None:
        self.sock.sendall(client_frame(payload, opcode))

    def send_json(self, frame: dict) -> None:
        self.send_frame(json.dumps(frame).encode())

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the server")
            self.buffer += chunk
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def recv_frame(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next server frame."""
        first, second = self._read(2)
        size = second & 0x7F
        if size == 126:
            size = struct.unpack("!H", self._read(2))[0]
        elif size == 127:
            size = struct.unpack("!Q", self._read(8))[0]
        return first & 0x0F, self._read(size)

    def recv_until_close(self) -> tuple[int | None, list[dict]]:
        """Read every frame up to the server's close frame: (close code, text frames), or
        (None, frames) if the connection ended without a close frame."""
        frames = []
        try:
            while True:
                opcode, payload = self.recv_frame()
                if opcode == 0x8:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                    return code, frames
                if opcode == 0x1:
                    frames.append(json.loads(payload))
        except (ConnectionError, OSError):
            return None, frames

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
