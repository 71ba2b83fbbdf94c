"""The WebSocket test client: a real socket to a real server process (the `websockets` library).

`WS` is the synchronous client most tests use; `Socket` is the same client on asyncio, for
tests that hold many sockets at once or interleave them in one event loop. Both authenticate
the same ways (a token header, a session cookie), send the browser's Origin by default, never
compress and never ping by themselves, and match replies to requests by a fresh `ref`.
A client that sends what no library would, or never reads, is tests.support.rawws.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid

from django.test import Client
from websockets.asyncio.client import connect as connect_async
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

_refs = itertools.count(1)


def new_ref(prefix: str = "r") -> str:
    return f"{prefix}{next(_refs)}"


def handshake_headers(*, token=None, cookie=None, headers=None) -> dict:
    """The headers that authenticate a socket (API token or session cookie)."""
    extra = dict(headers or {})
    if token:
        extra["Authorization"] = f"Token {token}"
    if cookie:
        extra["Cookie"] = cookie
    return extra


def default_origin(url: str) -> str:
    """The Origin a browser on the server's own page sends."""
    return "http://" + url.split("/")[2]


def session_cookie(user) -> str:
    """A real Django session for the user (stored in the database the servers read)."""
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


class WS:
    """One client socket. Keeps every frame it received, in order, in `frames`."""

    def __init__(
        self,
        url,
        *,
        token=None,
        session=None,
        origin="default",
        headers=None,
        open_timeout=15,
        **connect_kwargs,
    ):
        extra = handshake_headers(
            token=token, cookie=session and f"sessionid={session}", headers=headers
        )
        if origin == "default":
            origin = default_origin(url)
        self.ws = connect(
            url,
            additional_headers=extra,
            origin=origin,
            open_timeout=open_timeout,
            max_size=None,
            ping_interval=None,
            legacy=True,
            **connect_kwargs,
        )
        self.frames: list[dict] = []
        self.closed_code = None

    def send(self, **frame):
        self.ws.send(json.dumps(frame))

    def send_raw(self, text):
        self.ws.send(text)

    def recv(self, timeout=10.0) -> dict:
        try:
            frame = json.loads(self.ws.recv(timeout=timeout))
        except ConnectionClosed as exc:
            self.closed_code = exc.rcvd.code if exc.rcvd else 1006
            raise
        self.frames.append(frame)
        return frame

    def until(self, predicate, timeout=15.0) -> dict:
        """Receive until a frame matches; frames before it stay in `frames`."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no matching frame; last frames: {self.frames[-5:]}")
            frame = self.recv(timeout=left)
            if predicate(frame):
                return frame

    def seen(self, predicate, timeout=15.0) -> dict:
        """The first frame, received already or later, that matches."""
        for frame in self.frames:
            if predicate(frame):
                return frame
        return self.until(predicate, timeout)

    def request(self, type, timeout=15.0, **fields) -> dict:
        """Send a frame with a fresh ref and return the reply carrying that ref."""
        ref = new_ref()
        self.send(type=type, ref=ref, **fields)
        return self.until(lambda f: f.get("ref") == ref and f["type"] != "typing", timeout)

    def hello(self) -> dict:
        return self.until(lambda f: f["type"] == "hello")

    def subscribe(self, room, since=None, timeout=15.0) -> dict:
        fields = {"room": room} if since is None else {"room": room, "since": since}
        return self.request("subscribe", timeout=timeout, **fields)

    def send_message(self, room, body="hi", client_id=None, **kw) -> dict:
        return self.request(
            "message.send", room=room, body=body, client_id=str(client_id or uuid.uuid4()), **kw
        )

    def events(self, room) -> list[dict]:
        """The seq'd events of a room received so far, in arrival order."""
        return [
            f
            for f in self.frames
            if f.get("room") == room and f.get("seq") is not None and "id" in f
        ]

    def seqs(self, room) -> list[int]:
        return [f["seq"] for f in self.events(room)]

    def wait_seq(self, room, seq, timeout=20.0):
        if any(s >= seq for s in self.seqs(room)):
            return
        self.until(
            lambda f: f.get("room") == room and (f.get("seq") or 0) >= seq and "id" in f, timeout
        )

    def wait_closed(self, timeout=15.0) -> int:
        """Read until the server closes; returns the close code."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self.recv(timeout=max(0.01, deadline - time.monotonic()))
        except ConnectionClosed:
            return self.closed_code
        raise TimeoutError("socket still open")

    def close(self):
        try:
            self.ws.close()
        except Exception:
            pass


class Socket:
    """One client socket: JSON frames in, parsed frames out, with the close code kept."""

    def __init__(self, conn):
        self.conn = conn
        self.hello: dict | None = None

    @classmethod
    async def open(
        cls,
        server,
        *,
        token=None,
        cookie=None,
        origin="default",
        query="",
        expect_hello=True,
        headers=None,
        path=None,
    ) -> Socket:
        extra = handshake_headers(token=token, cookie=cookie, headers=headers)
        url = server.ws_url if path is None else f"ws://127.0.0.1:{server.port}{path}"
        if origin == "default":
            origin = default_origin(url)
        conn = await connect_async(
            url + query,
            origin=origin,
            additional_headers=extra,
            max_size=None,
            proxy=None,
            open_timeout=15,
            ping_interval=None,
            compression=None,
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
