"""A small WebSocket test client over a real socket (the `websockets` library, sync API)."""

from __future__ import annotations

import itertools
import json
import time
import uuid

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

_refs = itertools.count(1)


class WS:
    """One client socket. Keeps every frame it received, in order, in `frames`."""

    def __init__(self, url, *, token=None, session=None, origin="default", headers=None,
                 open_timeout=15, **connect_kwargs):
        extra = dict(headers or {})
        if token:
            extra["Authorization"] = f"Token {token}"
        if session:
            extra["Cookie"] = f"sessionid={session}"
        if origin == "default":
            origin = "http://" + url.split("/")[2]
        self.ws = connect(url, additional_headers=extra, origin=origin,
                          open_timeout=open_timeout, max_size=None, ping_interval=None,
                          legacy=True, **connect_kwargs)
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
        ref = f"r{next(_refs)}"
        self.send(type=type, ref=ref, **fields)
        return self.until(lambda f: f.get("ref") == ref and f["type"] != "typing", timeout)

    def hello(self) -> dict:
        return self.until(lambda f: f["type"] == "hello")

    def subscribe(self, room, since=None, timeout=15.0) -> dict:
        fields = {"room": room} if since is None else {"room": room, "since": since}
        return self.request("subscribe", timeout=timeout, **fields)

    def send_message(self, room, body="hi", client_id=None, **kw) -> dict:
        return self.request("message.send", room=room, body=body,
                            client_id=str(client_id or uuid.uuid4()), **kw)

    def events(self, room) -> list[dict]:
        """The seq'd events of a room received so far, in arrival order."""
        return [f for f in self.frames if f.get("room") == room and f.get("seq") is not None
                and "id" in f]

    def seqs(self, room) -> list[int]:
        return [f["seq"] for f in self.events(room)]

    def wait_seq(self, room, seq, timeout=20.0):
        if any(s >= seq for s in self.seqs(room)):
            return
        self.until(lambda f: f.get("room") == room and (f.get("seq") or 0) >= seq
                   and "id" in f, timeout)

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
