"""One open socket as the hub sees it: its writer, backpressure, ping answer and close codes.

Sockets are written directly (daphne hook in chatproject/serve.py: `chat.socket` scope
extension) so one event costs one framing and one buffer append per socket. A socket whose
unsent backlog (live events, replays and replies alike) exceeds CHAT_SEND_QUEUE_LIMIT frames or
CHAT_SEND_BUFFER_BYTES is dropped (close 1013, transport aborted) and resumes later with `since`.
Under any other ASGI server each socket gets a bounded queue and a writer task.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import time
import uuid
from contextlib import contextmanager

from django.conf import settings

from apps.core.wsframe import frame_payload, text_frame
from apps.events.fanout import serialize
from apps.users import presence

from .wire import PONG, valid_ref

logger = logging.getLogger(__name__)

CLOSE_SLOW = 1013  # the socket could not keep up; reconnect and resume with since
CLOSE_RESTART = 1012  # server restart (graceful shutdown)
CLOSE_HEARTBEAT = 4408


class Connection:
    """One open socket, as the hub sees it."""

    __slots__ = (
        "id",
        "user_id",
        "username",
        "send",
        "ext",
        "subs",
        "last_seen",
        "last_active",
        "status_hint",
        "closing",
        "queue",
        "writer",
        "waiting",
        "receiving",
        "on_send",
        "queued",
        "replay_end",
        "version",
        "max_frames",
        "max_bytes",
        "__weakref__",
    )

    def __init__(self, *, user_id, username, send, ext):
        self.id = uuid.uuid4().hex
        self.user_id = user_id
        self.username = username
        self.send = send  # the ASGI send
        self.ext = ext  # daphne hook (chatproject.serve.SocketExtension) or None
        self.subs: dict = {}  # room id -> streams.Subscription
        self.last_seen = self.last_active = time.monotonic()
        self.status_hint = None
        self.closing = False
        self.queue = None
        self.writer = None
        self.queued = 0  # frames ever put in `queue`
        self.replay_end = 0  # position() after the last replay written
        self.version = None  # the user's rights version (apps.users.rights) when last read
        # The backlog limits, read once: write() runs once per socket per event.
        self.max_frames = settings.CHAT_SEND_QUEUE_LIMIT
        self.max_bytes = settings.CHAT_SEND_BUFFER_BYTES
        # True while the consumer waits for this socket's next frame (nothing in progress):
        # only then may a ping be answered straight from the reactor (ping_now).
        self.waiting = False
        # True while the consumer waits for the next frame, sends in flight or not: a
        # message.send may then be queued straight from the reactor (on_send).
        self.receiving = False
        # Set by the consumer: takes a message.send frame's payload in the reactor, or
        # returns False (apps.messaging.consumers.ChatConsumer.send_now).
        self.on_send = None
        if ext is not None:
            ext.on_text = self.text_now

    def text_now(self, payload: bytes) -> bool:
        """The server's hook for a text frame with nothing from this socket queued
        (chatproject.serve.SocketExtension.on_text): a send goes to on_send, anything else to
        ping_now; False sends the frame the ASGI way, to the consumer."""
        if self.on_send is not None and b'"message.send"' in payload:
            return self.on_send(payload)
        return self.ping_now(payload)

    def ping(self, status, ref) -> None:
        """Answer a `ping` (PROTOCOL §3): `status` online/away is the client's hint for
        presence; a ping is not activity unless it says online."""
        if status == presence.AWAY:
            self.status_hint = presence.AWAY
        elif status == presence.ONLINE:
            self.status_hint = None
            self.last_active = time.monotonic()
        if ref is None:
            self.write(PONG)
        else:
            self.write_json({"type": "pong", "ref": ref})

    def ping_now(self, payload: bytes) -> bool:
        """The fast path for the commonest frame: idle sockets ping every heartbeat / 2.

        Called by the server (chatproject.serve) with a text frame when nothing from this
        socket is queued; answers it here, in order, if it is a well-formed `ping` and the
        consumer is waiting for its next frame, and says so. Anything else (other frames,
        malformed ones, a socket busy with a frame or closing) returns False and goes through
        the consumer as usual, which answers a ping with the same `ping()`.
        """
        if (
            not self.waiting
            or self.closing
            or len(payload) > 512
            or b'"ping"' not in payload
            or b"\\u" in payload  # escapes (a lone surrogate?): the consumer checks them
        ):
            return False
        try:
            frame = json.loads(payload.decode())
        except (ValueError, RecursionError):
            return False
        if not isinstance(frame, dict) or frame.get("type") != "ping":
            return False
        ref = frame.get("ref")
        if not valid_ref(ref):
            return False
        self.last_seen = time.monotonic()
        self.ping(frame.get("status"), ref)
        return True

    def status(self, now: float, away_after: float | None = None) -> str:
        if self.status_hint == presence.AWAY:
            return presence.AWAY
        if away_after is None:
            away_after = settings.CHAT_AWAY_SECONDS
        if now - self.last_active > away_after:
            return presence.AWAY
        return presence.ONLINE

    def write(self, frame: bytes) -> bool:
        """Queue one text frame (made by text_frame); False once the socket is closing. Never
        blocks.

        Every frame counts against the socket's backlog limits, live events, replies and
        replays alike: a socket that owes more than CHAT_SEND_QUEUE_LIMIT frames or
        CHAT_SEND_BUFFER_BYTES is dropped (too_slow). While the reader delivers a batch of
        channel messages (`corked()`), a daphne socket's frames are gathered and written once,
        in order, at the end of the batch.
        """
        if self.closing:
            return False
        ext = self.ext
        if ext is not None:
            if _cork is not None:
                frames = _cork.get(self)
                if frames is None:
                    _cork[self] = [frame]
                else:
                    frames.append(frame)
                return True
            return self._write_ext(ext, [frame])
        # Any other ASGI server: a bounded queue and a writer task per socket.
        if self.queue is None:
            self.queue = asyncio.Queue()
            self.writer = asyncio.ensure_future(self._drain())
        if self.queue.qsize() >= self.max_frames:
            self.too_slow()
            return False
        self.queue.put_nowait(frame)
        self.queued += 1
        return True

    def _write_ext(self, ext, frames: list[bytes]) -> bool:
        backlog = ext.send(frames)  # the backlog after the write, or None: not open
        if backlog is None:
            return False
        count, size = backlog
        if count > self.max_frames or size > self.max_bytes:
            self.too_slow()
            return False
        return True

    def write_json(self, frame: dict) -> bool:
        return self.write(text_frame(serialize(frame).encode()))

    def flushed(self) -> int:
        """How far the socket's output has gone out: bytes the kernel took (daphne), or frames
        handed to the ASGI server (elsewhere). Compare with a `position()` taken earlier."""
        if self.ext is not None:
            return self.ext.flushed()
        return self.queued - (self.queue.qsize() if self.queue is not None else 0)

    def position(self) -> int:
        """The flushed() value at which everything written so far is out."""
        return self.ext.written if self.ext is not None else self.queued

    def owes_much(self) -> bool:
        """The socket owes half its allowed backlog (frames or bytes): a replay waits."""
        if self.ext is not None:
            frames, size = self.ext.backlog()
            return frames * 2 > self.max_frames or size * 2 > self.max_bytes
        return self.queue is not None and self.queue.qsize() * 2 > self.max_frames

    async def drained(self, patience: float) -> bool:
        """Wait until the socket no longer owes_much(); False if its output made no progress
        for `patience` seconds (a client that does not read) or it closed."""
        progress, deadline = self.flushed(), time.monotonic() + patience
        while self.owes_much():
            if self.closing:
                return False
            await asyncio.sleep(0.02)
            now, flushed = time.monotonic(), self.flushed()
            if flushed > progress:
                progress, deadline = flushed, now + patience
            elif now >= deadline:
                return False
        return not self.closing

    async def replay_sent(self, timeout: float) -> bool:
        """Wait (up to `timeout` seconds) until the last replay is out of the server; False if
        it is still unsent (or the socket closed)."""
        deadline = time.monotonic() + timeout
        while self.flushed() < self.replay_end:
            if self.closing or time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return not self.closing

    async def _drain(self):
        try:
            while True:
                frame = await self.queue.get()
                await self.send({"type": "websocket.send", "text": frame_payload(frame).decode()})
        except Exception:  # the socket is gone
            self.closing = True

    def too_slow(self):
        logger.info("socket %s of user %s too slow; disconnecting", self.id, self.user_id)
        heap_freed()
        self.closing = True
        if self.ext is not None:
            self.ext.abort()
        asyncio.get_running_loop().create_task(self._close(CLOSE_SLOW))

    async def close(self, code: int):
        if self.closing:
            return
        self.closing = True
        await self._close(code)

    async def _close(self, code: int):
        if self.writer is not None and code != CLOSE_SLOW:
            # let queued frames out first (bounded by the queue limit)
            for _ in range(100):
                if self.queue.empty():
                    break
                await asyncio.sleep(0.01)
        if self.writer is not None:
            self.writer.cancel()
        try:
            if self.ext is not None:
                self.ext.close(code)
            else:
                await self.send({"type": "websocket.close", "code": code})
        except Exception:
            logger.warning("could not close socket %s", self.id, exc_info=True)


# --- Gathering a batch's frames per socket -----------------------------------------------------

_cork: dict | None = None  # Connection -> its frames, while corked() (one event loop per process)


@contextmanager
def corked():
    """Gather the frames written to daphne sockets inside the block and write each socket's
    at the end, joined: one send() and one backlog check per socket per batch of events
    instead of one per event (a group commit of ten events to fifty sockets was five hundred
    writes). Order per socket is kept; nothing awaits inside the block, so no other write can
    come between. Nested blocks join the outer one."""
    global _cork
    if _cork is not None:
        yield
        return
    _cork = gathered = {}
    try:
        yield
    finally:
        _cork = None
        for conn, frames in gathered.items():
            if not conn.closing:
                conn._write_ext(conn.ext, frames)


# --- Giving a dropped backlog's memory back -------------------------------------------------

_heap = {"freed": False, "libc": None}  # freed: a big backlog was freed since the last trim


def heap_freed() -> None:
    """Note that a socket's (possibly big) backlog was freed: the next maintenance trims."""
    _heap["freed"] = True


def trim_heap_if_freed() -> None:
    """Give the heap's free pages back to the system (glibc's malloc_trim) if a backlog was
    freed since the last call. A slow socket's backlog of megabytes is freed when it is
    dropped, but glibc keeps the pages otherwise: the process would stay at its peak size."""
    if not _heap["freed"]:
        return
    _heap["freed"] = False
    if _heap["libc"] is None:
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.malloc_trim  # noqa: B018  (glibc only)
        except (OSError, AttributeError):
            libc = False
        _heap["libc"] = libc
    if _heap["libc"]:
        _heap["libc"].malloc_trim(0)
