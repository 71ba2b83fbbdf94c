"""A small WebSocket client for the hardening tests: a real socket to a real server process."""

from __future__ import annotations

import asyncio
import itertools
import json
import re

from django.test import Client
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

_refs = itertools.count(1)


def new_ref(prefix: str = "r") -> str:
    return f"{prefix}{next(_refs)}"


class Socket:
    """One client socket: JSON frames in, parsed frames out, with the close code kept."""

    def __init__(self, conn):
        self.conn = conn
        self.hello: dict | None = None

    @classmethod
    async def open(cls, server, *, token=None, cookie=None, origin="default", query="",
                   expect_hello=True, headers=None, path=None) -> Socket:
        extra = dict(headers or {})
        if token:
            extra["Authorization"] = f"Token {token}"
        if cookie:
            extra["Cookie"] = cookie
        if origin == "default":
            origin = f"http://127.0.0.1:{server.port}"
        url = server.ws_url if path is None else f"ws://127.0.0.1:{server.port}{path}"
        conn = await connect(
            url + query, origin=origin, additional_headers=extra, max_size=None,
            proxy=None, open_timeout=15, ping_interval=None, compression=None,
        )
        sock = cls(conn)
        if expect_hello:
            sock.hello = await sock.recv()
            assert sock.hello.get("type") == "hello", sock.hello
        return sock

    @property
    def close_code(self) -> int | None:
        return self.conn.close_code

    async def send(self, frame) -> None:
        await self.conn.send(frame if isinstance(frame, (str, bytes)) else json.dumps(frame))

    async def recv(self, timeout: float = 10.0) -> dict:
        raw = await asyncio.wait_for(self.conn.recv(), timeout)
        return json.loads(raw)

    async def request(self, frame: dict, timeout: float = 10.0) -> tuple[dict, list[dict]]:
        """Send a frame with a fresh ref; return (the reply carrying that ref, frames before it)."""
        frame = dict(frame)
        frame.setdefault("ref", new_ref())
        await self.send(frame)
        return await self.until_ref(frame["ref"], timeout)

    async def until_ref(self, ref: str, timeout: float = 10.0) -> tuple[dict, list[dict]]:
        before = []
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise TimeoutError(f"no reply with ref {ref!r}; got {before!r}")
            message = await self.recv(left)
            if message.get("ref") == ref and message.get("type") != "hello":
                return message, before
            before.append(message)

    async def drain(self, quiet: float = 0.5) -> list[dict]:
        """Everything that arrives until the socket is quiet for `quiet` seconds."""
        got = []
        while True:
            try:
                got.append(await self.recv(quiet))
            except TimeoutError:
                return got

    async def ping(self, timeout: float = 10.0) -> tuple[dict, list[dict]]:
        return await self.request({"type": "ping"}, timeout)

    async def wait_closed(self, timeout: float = 15.0) -> tuple[int | None, list[dict]]:
        """Read until the server closes the socket; return (close code, frames read)."""
        got = []
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            while True:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    raise TimeoutError(f"socket still open; got {got!r}")
                got.append(json.loads(await asyncio.wait_for(self.conn.recv(), left)))
        except ConnectionClosed:
            return self.conn.close_code, got

    async def close(self) -> None:
        await self.conn.close()


async def handshake_status(server, **kwargs) -> int | None:
    """The HTTP status of a refused handshake, or None when the socket opened."""
    try:
        sock = await Socket.open(server, expect_hello=False, **kwargs)
    except InvalidStatus as exc:
        return exc.response.status_code
    await sock.close()
    return None


def run(coro):
    return asyncio.run(coro)


def session_cookie(user) -> str:
    """A real Django session for the user (stored in the database the servers read)."""
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ([A-Z]+) ")


def unhandled_errors(output: str) -> list[str]:
    """Error records, and tracebacks not attached to a WARNING/INFO record, in a server log.

    A handled failure logs a WARNING with its traceback (Redis busy, say); an unhandled one
    shows as an ERROR/CRITICAL record ("Exception inside application", logger.exception) or
    as a bare traceback.
    """
    found, level = [], None
    for line in output.splitlines():
        match = RECORD.match(line)
        if match:
            level = match.group(1)
            if level in ("ERROR", "CRITICAL"):
                found.append(line)
        elif line.startswith("Traceback") and level not in ("WARNING", "INFO", "DEBUG"):
            found.append(line)
    return found


def assert_clean_log(proc) -> None:
    """The server logged no unhandled exception."""
    output = proc.output()
    assert not unhandled_errors(output), output[-4000:]
