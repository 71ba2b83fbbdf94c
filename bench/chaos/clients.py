"""Chat clients that keep talking through faults, the way the contract tells a client to.

Each client holds one socket to one of the servers, subscribes to its room and sends messages
one at a time (a fresh client_id each, resent with the same client_id until acknowledged). When
its socket dies it reconnects -- to the other server if its own is gone -- subscribes again with
`since` = the last seq it holds, and resends the unacknowledged message. It records every room
event it receives, per socket, so the checks can tell gaps and duplicates from the server's
doing apart from its own.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid
from dataclasses import dataclass, field

from websockets.asyncio.client import connect

ACK_TIMEOUT = 10.0


@dataclass
class ClientStats:
    acked: dict = field(default_factory=dict)  # client_id -> ack envelope
    seqs: set = field(default_factory=set)  # every seq of the room received
    per_socket_gaps: int = 0
    per_socket_dups: int = 0
    reconnects: int = 0
    resumed: bool = False
    errors: dict = field(default_factory=dict)  # error code -> count
    truncated_pages: int = 0
    last_error: str = ""


class ChaosClient:
    def __init__(self, index: int, token: str, room: int, servers: list, home: int):
        self.index, self.token, self.room = index, token, room
        self.servers, self.home = servers, home
        self.stats = ClientStats()
        self.sending = True
        self.sent = 0
        self.pending: tuple[str, str] | None = None  # (client_id, body) not yet acknowledged
        self.last_seq = 0
        self.ws = None
        self.acks: dict[str, asyncio.Future] = {}
        self.subscribed: asyncio.Future | None = None
        self.socket_last = None  # last seq received on the current socket

    # --- connection -----------------------------------------------------------------------------
    def _server_order(self):
        alive = [s for s in self.servers if s.alive()]
        home = self.servers[self.home]
        return ([home] if home in alive else []) + [s for s in alive if s is not home]

    async def _connect(self):
        while True:
            for server in self._server_order():
                try:
                    ws = await connect(
                        server.ws_url,
                        origin=server.http_url,
                        proxy=None,
                        compression=None,
                        additional_headers={"Authorization": f"Token {self.token}"},
                        open_timeout=10,
                        ping_interval=None,
                        max_size=None,
                    )
                    hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    if hello.get("type") != "hello":
                        await ws.close()
                        raise ConnectionError(f"no hello: {hello}")
                    return ws, server
                except Exception as exc:
                    self.stats.last_error = f"connect: {exc!r}"
            await asyncio.sleep(0.5)

    async def session(self):
        """One socket's life: subscribe, resend, send until the socket dies or we stop."""
        self.ws, server = await self._connect()
        self.socket_last = None
        self.acks.clear()
        loop = asyncio.get_running_loop()
        self.subscribed = loop.create_future()
        reader = asyncio.create_task(self._read(server))
        try:
            await self.ws.send(
                json.dumps(
                    {"type": "subscribe", "room": self.room, "since": self.last_seq, "ref": "sub"}
                )
            )
            await self._wait(self.subscribed, reader)
            while True:
                if self.pending is None and self.sending:
                    self.sent += 1
                    self.pending = (str(uuid.uuid4()), f"c{self.index}-m{self.sent}")
                if self.pending is None:
                    if reader.done():
                        return
                    await asyncio.sleep(0.2)
                    continue
                client_id, body = self.pending
                future = loop.create_future()
                self.acks[client_id] = future
                await self.ws.send(
                    json.dumps(
                        {
                            "type": "message.send",
                            "room": self.room,
                            "body": body,
                            "client_id": client_id,
                            "ref": client_id,
                        }
                    )
                )
                reply = await self._wait(future, reader)
                if reply["type"] == "ack":
                    self.stats.acked[client_id] = reply["event"]
                    self.pending = None
                    await asyncio.sleep(self.interval)
                else:
                    code = reply.get("code")
                    self.stats.errors[code] = self.stats.errors.get(code, 0) + 1
                    await asyncio.sleep(1.0 if code in ("rate_limited", "unavailable") else 0.2)
        finally:
            reader.cancel()
            try:
                await self.ws.close()
            except Exception:
                pass

    @staticmethod
    async def _wait(future, reader):
        """The reply, or an exception when the socket dies or no reply comes in time."""
        await asyncio.wait(
            {future, reader}, timeout=ACK_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        if future.done():
            return future.result()
        raise ConnectionError("socket closed" if reader.done() else "no reply in time")

    async def _read(self, server):
        async for raw in self.ws:
            frame = json.loads(raw)
            kind = frame.get("type")
            if kind in ("ack", "error") and frame.get("ref") in self.acks:
                future = self.acks.pop(frame["ref"])
                if not future.done():
                    future.set_result(frame)
            elif kind == "subscribed" and frame.get("ref") == "sub":
                if frame.get("truncated"):
                    await asyncio.to_thread(self._page_rest, server, frame["last_seq"])
                if not self.subscribed.done():
                    self.subscribed.set_result(frame)
            elif kind == "error" and frame.get("ref") == "sub":
                if not self.subscribed.done():
                    self.subscribed.set_exception(RuntimeError(f"subscribe refused: {frame}"))
            elif frame.get("room") == self.room and frame.get("seq") is not None:
                self._receive(frame["seq"])

    def _receive(self, seq: int) -> None:
        if self.socket_last is not None:
            if seq <= self.socket_last:
                self.stats.per_socket_dups += 1
            elif seq != self.socket_last + 1:
                self.stats.per_socket_gaps += 1
        self.socket_last = seq if self.socket_last is None else max(self.socket_last, seq)
        self.stats.seqs.add(seq)
        self.last_seq = max(self.last_seq, seq)

    def _page_rest(self, server, last_seq: int) -> None:
        """A truncated replay: page the rest of the log over REST, as the contract says."""
        self.stats.truncated_pages += 1
        since = self.last_seq
        while since < last_seq:
            request = urllib.request.Request(
                f"{server.http_url}/api/rooms/{self.room}/events/?since={since}&limit=1000",
                headers={"Authorization": f"Token {self.token}"},
            )
            with urllib.request.urlopen(request, timeout=15) as response:
                page = json.loads(response.read())
            events = page.get("results", page) if isinstance(page, dict) else page
            if not events:
                break
            for event in events:
                self.stats.seqs.add(event["seq"])
                self.last_seq = max(self.last_seq, event["seq"])
            since = self.last_seq

    async def run(self, rate: float):
        """Sessions, one after another, until cancelled at the end of the run."""
        self.interval = 1.0 / rate
        while True:
            try:
                await self.session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the socket died or an ack timed out: resume
                self.stats.last_error = repr(exc)
            self.stats.reconnects += 1
            self.stats.resumed = True
            await asyncio.sleep(0.2)

    async def settle(self, target_seq: int, timeout: float) -> bool:
        """After sending stopped: wait until this client holds the room up to target_seq."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.last_seq >= target_seq:
                return True
            await asyncio.sleep(0.2)
        return self.last_seq >= target_seq
