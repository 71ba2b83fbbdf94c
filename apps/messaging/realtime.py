"""Process-level fan-out: the hub that hands events to this process's sockets in seq order.

Design (PROTOCOL §3, "fan-out that scales"):

- One channel-layer channel per server process. On the first local subscription to room R the
  process joins the group `room.R` with that channel (and `user.U` for users with a local socket,
  and `presence`). An event therefore crosses Redis once per interested process, already
  serialized; the reader task below hands the same bytes to every local socket.
- Per room the hub keeps `head`: the last seq handed to local subscribers. The room's stream is
  contiguous: seq head+1 is delivered at once; a later seq waits in `pending` while the gap is
  filled from the event log (after a short grace, since two processes committing into one room
  reach Redis in either order); seq <= head is a duplicate and dropped.
- Per subscription `last` is the last seq sent to that socket; a subscription registers (and
  buffers live events) before its replay query, so nothing falls between replay and live.
- A periodic check compares each followed room's committed last_seq with `head` and fills what
  the channel layer lost (Redis restart, channel capacity): the event log is the source of truth.
- Sockets are written directly (daphne hook in chatproject/serve.py: `chat.socket` scope
  extension) so one event costs one framing and one buffer append per socket. A socket whose
  unsent backlog (live events, replays and replies alike) exceeds CHAT_SEND_QUEUE_LIMIT frames
  or CHAT_SEND_BUFFER_BYTES is dropped
  (close 1013, transport aborted) and resumes later with `since`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from types import SimpleNamespace

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from redis.exceptions import TimeoutError as RedisTimeout

from apps.core.aio import PerLoop
from apps.events import catalogue, fanout
from apps.events.observability import (
    FANOUT_LATENCY,
    WS_EVENTS_DELIVERED,
    WS_OPEN_SOCKETS,
    WS_SUBSCRIPTIONS,
)
from apps.users import presence, sessions

logger = logging.getLogger(__name__)

CLOSE_SLOW = 1013  # the socket could not keep up; reconnect and resume with since
CLOSE_RESTART = 1012  # server restart (graceful shutdown)
CLOSE_HEARTBEAT = 4408
# A Redis call on a socket's own path (connect, subscribe, rate limit) waits at most this long;
# after a failure such calls are skipped for REDIS_BACKOFF seconds, so a hung Redis costs the
# first socket REDIS_TIMEOUT and the others nothing (the log serves them meanwhile).
REDIS_TIMEOUT = 2.0
REDIS_BACKOFF = 5.0


class RedisUnavailable(Exception):
    """Redis failed or timed out recently; the call was not attempted."""

_db_executor: ThreadPoolExecutor | None = None


def db(func):
    """Run a sync service call in the dedicated database thread pool (not thread-sensitive:
    calls from many sockets run in parallel, each thread on its own pooled connection)."""
    global _db_executor
    if _db_executor is None:
        _db_executor = ThreadPoolExecutor(
            max_workers=getattr(settings, "CHAT_DB_THREADS", 8), thread_name_prefix="chat-db"
        )
    return database_sync_to_async(func, thread_sensitive=False, executor=_db_executor)


def setting(name, default):
    return getattr(settings, name, default)


# --- Reads from the event log (run in the database thread pool) ------------------------------


def events_after(room_id: int, after: int, upto: int | None = None, limit: int | None = None):
    """Envelopes of the room's log with after < seq (<= upto), oldest first."""
    from apps.events.models import Event

    qs = Event.objects.filter(room_id=room_id).sequenced().since(after)
    if upto is not None:
        qs = qs.filter(seq__lte=upto)
    if limit is not None:
        qs = qs[:limit]
    return list(qs.values_list("seq", "envelope"))


def room_heads(room_ids) -> dict[int, int]:
    from apps.rooms.models import Room

    return dict(Room.objects.filter(pk__in=list(room_ids)).values_list("pk", "last_seq"))


REPLAY_CHUNK = 100  # events read from the log per query of a replay


def history_bounds(room_id: int) -> tuple[int, int] | None:
    """(last_seq, history_start) of a room, or None if it does not exist."""
    from apps.rooms.models import Room

    return Room.objects.filter(pk=room_id).values_list("last_seq", "history_start").first()


def replay(user, room_id, since, limit):
    """(first events, head, history_start) for a subscription, or ServiceError if the user
    may not follow.

    `limit` bounds the events read here; the rest of the replay is read a chunk at a time
    while it is written (Hub.subscribe), so a replay never holds all its events at once.
    The log is read before the permission check: a ban committed after the check has a seq
    above `head`, so it reaches the socket live (and ends the subscription there). A `since`
    below history_start (purged by retention) replays from history_start, not truncated.
    """
    from apps.rooms import services as rooms

    head, history_start = history_bounds(room_id) or (None, 1)
    events = []
    if head is not None and since is not None and since < head:
        events = events_after(room_id, since, head, limit)
    rooms.check_can_read(rooms.get_room_or_404(room_id, user), user)
    return events, head, history_start


def visible_rooms(user_id, room_ids) -> set[int] | None:
    """The rooms among `room_ids` the user may follow now; None if the account is disabled."""
    from django.contrib.auth import get_user_model

    from apps.core.errors import ServiceError
    from apps.rooms import services as rooms
    from apps.rooms.models import Room

    user = get_user_model().objects.filter(pk=user_id, is_active=True).first()
    if user is None:
        return None
    visible = set()
    for room in Room.objects.filter(pk__in=list(room_ids)):
        try:
            rooms.check_can_read(room, user)
        except ServiceError:
            continue
        visible.add(room.pk)
    return visible


def shared_room_ids(user_ids) -> dict[int, list[int]]:
    """user id -> ids of the rooms where the user is an active member."""
    from apps.rooms.models import Membership

    rooms: dict[int, list[int]] = {u: [] for u in user_ids}
    pairs = Membership.objects.filter(user_id__in=list(user_ids)).active()
    for user_id, room_id in pairs.values_list("user_id", "room_id"):
        rooms[user_id].append(room_id)
    return rooms


# --- WebSocket frames ------------------------------------------------------------------------


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
    return frame[2 + (2 if size == 126 else 8 if size == 127 else 0):]


REF_MAX = 200  # characters of a frame's `ref`
PONG = text_frame(fanout.serialize({"type": "pong", "ref": None}).encode())


def valid_ref(ref) -> bool:
    return ref is None or (isinstance(ref, str) and len(ref) <= REF_MAX)


# --- Sockets and subscriptions --------------------------------------------------------------


class Connection:
    """One open socket, as the hub sees it."""

    __slots__ = (
        "id", "user_id", "username", "send", "ext", "subs", "last_seen", "last_active",
        "status_hint", "closing", "queue", "writer", "waiting", "queued", "replay_end",
        "version", "__weakref__",
    )

    def __init__(self, *, user_id, username, send, ext):
        self.id = uuid.uuid4().hex
        self.user_id = user_id
        self.username = username
        self.send = send  # the ASGI send
        self.ext = ext  # daphne hook (chatproject.serve.SocketExtension) or None
        self.subs: dict[int, Subscription] = {}
        self.last_seen = self.last_active = time.monotonic()
        self.status_hint = None
        self.closing = False
        self.queue = None
        self.writer = None
        self.queued = 0  # frames ever put in `queue`
        self.replay_end = 0  # position() after the last replay written
        self.version = None  # the user's rights version (apps.users.rights) when last read
        # True while the consumer waits for this socket's next frame (nothing in progress):
        # only then may a ping be answered straight from the reactor (ping_now).
        self.waiting = False
        if ext is not None:
            ext.on_text = self.ping_now

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
            not self.waiting or self.closing or len(payload) > 512 or b'"ping"' not in payload
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
            away_after = setting("CHAT_AWAY_SECONDS", 300)
        if now - self.last_active > away_after:
            return presence.AWAY
        return presence.ONLINE

    def write(self, frame: bytes) -> bool:
        """Queue one text frame (made by text_frame); False once the socket is closing. Never
        blocks.

        Every frame counts against the socket's backlog limits, live events, replies and
        replays alike: a socket that owes more than CHAT_SEND_QUEUE_LIMIT frames or
        CHAT_SEND_BUFFER_BYTES is dropped (too_slow).
        """
        if self.closing:
            return False
        ext = self.ext
        if ext is not None:
            if not ext.write(frame):
                return False
            frames, size = ext.backlog()
            if frames > settings.CHAT_SEND_QUEUE_LIMIT or size > setting(
                "CHAT_SEND_BUFFER_BYTES", 8 * 1024 * 1024
            ):
                self.too_slow()
                return False
            return True
        # Any other ASGI server: a bounded queue and a writer task per socket.
        if self.queue is None:
            self.queue = asyncio.Queue()
            self.writer = asyncio.ensure_future(self._drain())
        if self.queue.qsize() >= settings.CHAT_SEND_QUEUE_LIMIT:
            self.too_slow()
            return False
        self.queue.put_nowait(frame)
        self.queued += 1
        return True

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
            return (frames * 2 > settings.CHAT_SEND_QUEUE_LIMIT
                    or size * 2 > setting("CHAT_SEND_BUFFER_BYTES", 8 * 1024 * 1024))
        return self.queue is not None and self.queue.qsize() * 2 > settings.CHAT_SEND_QUEUE_LIMIT

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

    def write_json(self, frame: dict) -> bool:
        return self.write(text_frame(fanout.serialize(frame).encode()))

    async def _drain(self):
        try:
            while True:
                frame = await self.queue.get()
                await self.send({"type": "websocket.send", "text": frame_payload(frame).decode()})
        except Exception:  # the socket is gone
            self.closing = True

    def too_slow(self):
        global _heap_freed
        logger.info("socket %s of user %s too slow; disconnecting", self.id, self.user_id)
        _heap_freed = True
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


_heap_freed = False  # a dropped socket's backlog was freed since the last trim_heap()
_libc = None


def trim_heap() -> None:
    """Give the heap's free pages back to the system (glibc's malloc_trim). A slow socket's
    backlog of megabytes is freed when it is dropped, but glibc keeps the pages otherwise: the
    process would stay at its peak size for good."""
    global _heap_freed, _libc
    _heap_freed = False
    if _libc is None:
        import ctypes

        try:
            _libc = ctypes.CDLL("libc.so.6")
            _libc.malloc_trim  # noqa: B018  (glibc only)
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        _libc.malloc_trim(0)


class Subscription:
    __slots__ = ("conn", "room_id", "last", "buffer", "stream_from")

    def __init__(self, conn, room_id):
        self.conn = conn
        self.room_id = room_id
        self.last = 0
        self.buffer: list | None = []  # live events while subscribing; None once live
        self.stream_from: int | None = None  # the room stream reaches this sub for seq > this


class Item:
    """One event ready to go out: its seq, its WebSocket frame, and whom it cuts off."""

    __slots__ = ("seq", "data", "type", "revokes")

    def __init__(self, seq, data, type, revokes=None):
        self.seq, self.data, self.type, self.revokes = seq, data, type, revokes

    @classmethod
    def from_envelope(cls, envelope: dict) -> Item:
        return cls(
            envelope["seq"],
            text_frame(fanout.serialize(envelope).encode()),
            envelope["type"],
            fanout.revoked_user(envelope),
        )


class RoomStream:
    __slots__ = ("room_id", "subs", "head", "pending", "fill_task", "joined", "seen_db_last")

    def __init__(self, room_id):
        self.room_id = room_id
        self.subs: dict[Connection, Subscription] = {}
        self.head: int | None = None
        self.pending: dict[int, Item] = {}
        self.fill_task: asyncio.Task | None = None
        self.joined: asyncio.Future | None = None
        self.seen_db_last: int | None = None


# --- The hub ---------------------------------------------------------------------------------


class Hub:
    def __init__(self, loop):
        self.loop = loop
        fanout.use_loop(loop)
        self.layer = get_channel_layer()
        self.channel: str | None = None
        self.rooms: dict[int, RoomStream] = {}
        self.users: dict[int, set[Connection]] = {}
        self.connections: set[Connection] = set()
        self.tasks: list[asyncio.Task] = []
        self.started: asyncio.Future | None = None
        self.shutting_down = False
        # Bounds concurrent channel-layer calls: a burst of sockets must not exhaust the pool.
        self.redis_slots = asyncio.Semaphore(setting("CHAT_REDIS_CONCURRENCY", 32))
        # (user id, room id) -> (monotonic time, state) of the last typing event sent
        self.typing: dict[tuple[int, int], tuple[float, bool]] = {}
        self.presence_out: dict[int, tuple[str | None, str]] = {}
        self.presence_task: asyncio.Task | None = None
        self.redis_down_until = 0.0
        # user id -> the newest rights version this process heard of (apps.users.rights)
        self.versions: dict[int, int] = {}

    # -- lifecycle

    async def start(self):
        if self.started is None:
            self.started = self.loop.create_future()
            try:
                if self.layer is not None:
                    self.channel = await self.layer.new_channel("realtime")
                    # Redis down at start: the reader joins again once it is back.
                    await self._quietly(self.redis_call(self.group("group_add", fanout.PRESENCE_GROUP)))
                    self.tasks.append(self.loop.create_task(self._reader()))
                self.tasks.append(self.loop.create_task(self._maintenance()))
                self.started.set_result(True)
            except BaseException as exc:
                self.started.set_exception(exc)
                self.started = None
                raise
        await self.started

    async def shutdown(self, code: int = CLOSE_RESTART):
        """Close every local socket with `code` (graceful shutdown: clients resume elsewhere).

        Presence entries are left to expire, so a user who reconnects to another process at
        once never shows as offline.
        """
        self.shutting_down = True
        await asyncio.gather(*(c.close(code) for c in list(self.connections)), return_exceptions=True)

    async def redis_call(self, awaitable):
        """Await a Redis call on a socket's path, bounded by REDIS_TIMEOUT; skipped (raising
        RedisUnavailable) for REDIS_BACKOFF seconds after a failure."""
        if time.monotonic() < self.redis_down_until:
            awaitable.close()
            raise RedisUnavailable()
        try:
            return await asyncio.wait_for(awaitable, REDIS_TIMEOUT)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.redis_down_until = time.monotonic() + REDIS_BACKOFF
            raise

    # -- sockets

    async def attach(self, conn: Connection):
        """Register a socket; False if the user already has CHAT_MAX_SOCKETS_PER_USER open."""
        await self.start()
        limit = settings.CHAT_MAX_SOCKETS_PER_USER
        try:
            changed, status, count = await self.redis_call(presence.backend().connect(
                conn.user_id, conn.id, conn.status(time.monotonic()), self.presence_ttl(), limit,
            ))
        except Exception:
            # Presence (Redis) is down: serve the socket anyway, with this process's count as
            # the socket limit; the next presence refresh registers it once Redis is back.
            logger.warning("presence unavailable; accepting socket %s on the local count",
                           conn.id, exc_info=True)
            if len(self.users.get(conn.user_id, ())) >= limit:
                return False
            changed, status = 0, None
        if changed == -1:
            return False
        self.connections.add(conn)
        WS_OPEN_SOCKETS.inc()
        sockets = self.users.get(conn.user_id)
        if sockets is None:
            sockets = self.users[conn.user_id] = set()
            if self.layer is not None:  # joined again by the reader after a Redis outage
                await self._quietly(
                    self.redis_call(self.group("group_add", fanout.user_group(conn.user_id))))
        sockets.add(conn)
        if changed == 1:
            await self.publish_presence(conn.user_id, conn.username, status)
        return True

    async def detach(self, conn: Connection):
        global _heap_freed
        if conn not in self.connections:
            return
        if conn.ext is not None and conn.ext.written > 1024 * 1024:
            _heap_freed = True  # what it held may have been a big backlog: trim_heap()
        self.connections.discard(conn)
        WS_OPEN_SOCKETS.dec()
        conn.closing = True
        for sub in list(conn.subs.values()):
            self.drop(sub)
        sockets = self.users.get(conn.user_id)
        if sockets is not None:
            sockets.discard(conn)
            if not sockets:
                del self.users[conn.user_id]
                self.versions.pop(conn.user_id, None)
                if self.layer is not None and not self.shutting_down:
                    await self._quietly(self.group("group_discard", fanout.user_group(conn.user_id)))
        if not self.shutting_down:
            try:
                status = await presence.backend().disconnect(conn.user_id, conn.id)
            except Exception:
                logger.warning("presence: could not remove socket %s", conn.id, exc_info=True)
                status = None
            if status is not None:
                await self.publish_presence(conn.user_id, conn.username, status)

    @staticmethod
    def presence_ttl() -> float:
        return settings.CHAT_HEARTBEAT_SECONDS * 2.5

    async def publish_presence(self, user_id, username, status):
        """Queue a presence change; changes within a short window go out together (one room
        query and one channel-layer message per batch, however many sockets come and go)."""
        self.presence_out[user_id] = (username, status)
        if self.presence_task is None or self.presence_task.done():
            self.presence_task = self.loop.create_task(self._send_presence())

    async def _send_presence(self):
        await asyncio.sleep(0.05)
        while self.presence_out:
            batch = dict(list(self.presence_out.items())[:500])
            for user_id in batch:
                del self.presence_out[user_id]
            try:
                missing = [u for u, (name, _) in batch.items() if name is None]
                names = await db(_usernames)(missing) if missing else {}
                rooms = await db(shared_room_ids)(list(batch))
                await fanout.apresence([
                    {"user": {"id": u, "username": name or names.get(u, "")}, "status": status,
                     "rooms": rooms.get(u, [])}
                    for u, (name, status) in batch.items()
                ])
            except Exception:
                logger.warning("presence: could not publish %d changes", len(batch),
                               exc_info=True)

    # -- subscriptions

    async def _stream(self, room_id) -> RoomStream:
        stream = self.rooms.get(room_id)
        if stream is None:
            stream = self.rooms[room_id] = RoomStream(room_id)
            stream.joined = self.loop.create_future()
            try:
                if self.layer is not None:
                    await self.redis_call(self.group("group_add", fanout.room_group(room_id)))
            except Exception:
                # Redis is down: the stream is served from the event log (check_gaps) until
                # the reader, seeing the outage, joins every group again.
                logger.warning("could not join room %s's group; following it from the log",
                               room_id, exc_info=True)
            except BaseException as exc:
                stream.joined.set_exception(exc)
                stream.joined.exception()  # mark retrieved
                if self.rooms.get(room_id) is stream and not stream.subs:
                    del self.rooms[room_id]
                raise
            stream.joined.set_result(True)
        else:
            await asyncio.shield(stream.joined)
        return stream

    async def subscribe(self, conn: Connection, user, room_id: int, since: int | None, ref):
        """Replay seq > since, send `subscribed`, then go live. Raises ServiceError."""
        old = conn.subs.get(room_id)
        if old is not None:
            self.drop(old)
        elif len(conn.subs) >= settings.CHAT_MAX_ROOMS_PER_SOCKET:
            from apps.core.errors import ServiceError

            raise ServiceError(
                "too_large",
                f"a socket may follow at most {settings.CHAT_MAX_ROOMS_PER_SOCKET} rooms",
            )
        stream = await self._stream(room_id)
        sub = Subscription(conn, room_id)
        sub.stream_from = stream.head
        stream.subs[conn] = sub
        conn.subs[room_id] = sub
        WS_SUBSCRIPTIONS.inc()
        limit = settings.CHAT_REPLAY_LIMIT
        # One event more than may be sent tells whether the replay is truncated.
        asked = min(REPLAY_CHUNK, limit + 1)
        try:
            rows, head, history_start = await db(replay)(user, room_id, since, asked)
        except BaseException:
            self.drop(sub)
            raise
        if conn.subs.get(room_id) is not sub:  # unsubscribed or closed meanwhile
            return
        if stream.head is None:
            self.set_base(stream, head)
        sent, last, truncated = 0, since, False
        while rows:
            take = rows[: limit - sent]
            for seq, envelope in take:
                # Written as fast as the client reads (every byte counts in its backlog):
                # a client that stops reading is dropped as too slow.
                if conn.owes_much():
                    if not await conn.drained(setting("CHAT_REPLAY_WAIT_SECONDS", 2.0)):
                        self.drop(sub)
                        if not conn.closing:
                            conn.too_slow()
                        return
                    if conn.subs.get(room_id) is not sub:
                        return
                if not conn.write(text_frame(fanout.serialize(envelope).encode())):
                    self.drop(sub)  # too slow: the socket is being closed
                    return
                last = seq
            sent += len(take)
            if len(rows) > len(take):
                truncated = True
                break
            if len(rows) < asked:
                break
            asked = min(REPLAY_CHUNK, limit - sent + 1)
            rows = await db(events_after)(room_id, last, head, asked)
            if conn.subs.get(room_id) is not sub:
                return
        last_seq = last if truncated else head
        conn.write_json({"type": "subscribed", "ref": ref, "room": room_id, "last_seq": last_seq,
                         "truncated": truncated, "head": head, "history_start": history_start})
        if sent:
            conn.replay_end = conn.position()
        sub.last = head
        if sub.stream_from is not None and sub.stream_from > sub.last:
            # Another subscriber set the room's stream base above our snapshot: fetch between.
            missing = await db(events_after)(room_id, sub.last, sub.stream_from)
            if conn.subs.get(room_id) is not sub:
                return
            for _seq, envelope in missing:
                if not self._push(sub, Item.from_envelope(envelope)):
                    return
        while sub.buffer:
            item = sub.buffer.pop(0)
            if not self._push(sub, item):
                return
        sub.buffer = None

    # -- rights (apps.users.rights)

    def rights_changed(self, user_id: int, version: int, *, closing: bool = False):
        """The user's rights changed (on any process): note the version, so each socket
        reloads its user before its next frame, and end the subscriptions the user may no
        longer see (unless the sockets are being closed anyway)."""
        if version <= self.versions.get(user_id, -1):
            return
        self.versions[user_id] = version
        if not closing and self.users.get(user_id):
            self.loop.create_task(self._recheck(user_id))

    async def _recheck(self, user_id: int):
        conns = [c for c in self.users.get(user_id, ()) if not c.closing]
        room_ids = {r for c in conns for r in c.subs}
        if not room_ids:
            return
        try:
            visible = await db(visible_rooms)(user_id, room_ids)
        except Exception:
            logger.warning("could not re-check the rooms of user %s", user_id, exc_info=True)
            return
        for conn in conns:
            if visible is None:  # deactivated or deleted meanwhile
                conn.write_json({"type": "error", "ref": None, "code": "forbidden",
                                 "message": "the account was deactivated"})
                await conn.close(sessions.CLOSE_FORBIDDEN)
                continue
            for room_id, sub in list(conn.subs.items()):
                if room_id not in visible:
                    self.drop(sub)
                    conn.write_json({"type": "unsubscribed", "ref": None, "room": room_id,
                                     "reason": "forbidden"})

    async def check_versions(self):
        """Catch rights changes whose channel-layer message this process missed."""
        from apps.users import rights

        try:
            current = await rights.versions(list(self.users))
        except Exception:  # Redis down: the next check catches up
            logger.warning("could not read the rights versions", exc_info=True)
            return
        for user_id, version in current.items():
            known = self.versions.get(user_id)
            if known is None:
                self.versions[user_id] = version
            elif version > known:
                self.rights_changed(user_id, version)

    def unsubscribe(self, conn: Connection, room_id: int):
        sub = conn.subs.get(room_id)
        if sub is not None:
            self.drop(sub)

    def drop(self, sub: Subscription):
        conn = sub.conn
        if conn.subs.get(sub.room_id) is sub:
            del conn.subs[sub.room_id]
            WS_SUBSCRIPTIONS.dec()
        stream = self.rooms.get(sub.room_id)
        if stream is not None and stream.subs.get(conn) is sub:
            del stream.subs[conn]
            if not stream.subs and stream.joined is not None and stream.joined.done():
                del self.rooms[sub.room_id]
                if stream.fill_task is not None:
                    stream.fill_task.cancel()
                if self.layer is not None and not self.shutting_down:
                    self.loop.create_task(self._leave_room(sub.room_id))

    async def _leave_room(self, room_id):
        if room_id not in self.rooms:  # not followed again in the meantime
            await self._quietly(self.group("group_discard", fanout.room_group(room_id)))

    def _push(self, sub: Subscription, item: Item) -> bool:
        """Send one seq'd event to one live subscription; False if the subscription ended."""
        if item.seq <= sub.last:
            return True
        sub.last = item.seq
        conn = sub.conn
        conn.write(item.data)
        if item.revokes is not None and item.revokes == conn.user_id:
            self.drop(sub)
            reason = "banned" if item.type == "member.banned" else "left"
            conn.write_json({"type": "unsubscribed", "ref": None, "room": sub.room_id,
                             "reason": reason})
            return False
        return True

    # -- the room stream

    def set_base(self, stream: RoomStream, head: int):
        stream.head = head
        for sub in stream.subs.values():
            if sub.stream_from is None:
                sub.stream_from = head
        self._drain_pending(stream)

    def on_seq(self, stream: RoomStream, item: Item):
        head = stream.head
        if head is not None and item.seq <= head:
            return
        if head is not None and item.seq == head + 1:
            self._advance(stream, item)
            self._drain_pending(stream)
            return
        stream.pending[item.seq] = item
        if head is not None:
            self._schedule_fill(stream)

    def _drain_pending(self, stream: RoomStream):
        pending = stream.pending
        if not pending:
            return
        for seq in [s for s in pending if s <= stream.head]:
            del pending[seq]
        while stream.head + 1 in pending:
            self._advance(stream, pending.pop(stream.head + 1))
        if pending:
            self._schedule_fill(stream)

    def _advance(self, stream: RoomStream, item: Item):
        stream.head = item.seq
        revoked = []
        sent = 0
        for sub in stream.subs.values():
            if sub.buffer is not None:
                sub.buffer.append(item)
                continue
            if item.seq <= sub.last:
                continue
            sub.last = item.seq
            sub.conn.write(item.data)
            sent += 1
            if item.revokes is not None and item.revokes == sub.conn.user_id:
                revoked.append(sub)
        if sent:
            WS_EVENTS_DELIVERED.labels(item.type).inc(sent)
        for sub in revoked:
            self.drop(sub)
            reason = "banned" if item.type == "member.banned" else "left"
            sub.conn.write_json({"type": "unsubscribed", "ref": None, "room": sub.room_id,
                                 "reason": reason})

    def _schedule_fill(self, stream: RoomStream, target: int | None = None, grace=None):
        if stream.fill_task is None or stream.fill_task.done():
            stream.fill_task = self.loop.create_task(self._fill(stream, target, grace))

    async def _fill(self, stream: RoomStream, target, grace):
        """Fill the stream's gap from the event log (after a grace for late channel messages)."""
        await asyncio.sleep(setting("CHAT_GAP_GRACE_SECONDS", 0.1) if grace is None else grace)
        for _attempt in range(100):
            if self.rooms.get(stream.room_id) is not stream or stream.head is None:
                return
            want = target or 0
            if stream.pending:
                want = max(want, min(stream.pending) - 1)
            if want <= stream.head:
                return
            try:
                rows = await db(events_after)(stream.room_id, stream.head, want, 1000)
            except Exception:
                logger.warning("gap fill for room %s failed", stream.room_id, exc_info=True)
                await asyncio.sleep(1)
                continue
            if not rows or rows[0][0] > stream.head + 1:
                # The log is gapless but for the prefix retention removed: if head+1 is not
                # there, it was purged. Skip to history_start (never wait for it again).
                if not await self._skip_purged(stream):
                    return
                continue
            for seq, envelope in rows:
                if seq == stream.head + 1:
                    self._advance(stream, Item.from_envelope(envelope))
            self._drain_pending(stream)

    async def _skip_purged(self, stream: RoomStream) -> bool:
        """Move the stream's head up to history_start - 1 if retention purged the seqs after
        it; True if it moved."""
        try:
            bounds = await db(history_bounds)(stream.room_id)
        except Exception:
            logger.warning("gap fill for room %s failed", stream.room_id, exc_info=True)
            return False
        if bounds is None or stream.head is None or bounds[1] - 1 <= stream.head:
            return False
        logger.info("room %s: seqs %s..%s were purged by retention; skipping",
                    stream.room_id, stream.head + 1, bounds[1] - 1)
        stream.head = bounds[1] - 1
        self._drain_pending(stream)
        return True

    # -- channel-layer messages

    async def _reader(self):
        backoff = 0.1
        groups_stale = False
        while True:
            if groups_stale:
                # A restarted Redis forgot our group memberships, and the first attempt to
                # join again may meet a pooled connection to the old server: retry until the
                # joins succeed, else this process would receive nothing until the next
                # periodic refresh.
                try:
                    await self.refresh_groups()
                    groups_stale = False
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.warning("re-joining channel-layer groups failed; retrying", exc_info=True)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
            try:
                messages = await self._receive_batch()
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except (TimeoutError, RedisTimeout):  # an idle blocking pop outlived the timeout
                continue
            except Exception:
                logger.warning("channel layer receive failed; retrying", exc_info=True)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                groups_stale = True
                continue
            for message in messages:
                try:
                    self.handle(message)
                except Exception:
                    logger.exception("could not handle channel message %r", message.get("type"))

    async def _receive_batch(self) -> list[dict]:
        """The next messages on the process channel, as many as are waiting.

        With channels-redis the process channel's sorted set is popped directly, up to 1000
        messages per round trip: its own receive() costs four round trips per message, which
        caps a busy process at a few hundred events/s. (A message popped by a process that then
        dies is not lost for anyone else: each process has its own channel, and sockets fill
        gaps from the event log.) Other layers go through receive().
        """
        layer = self.layer
        if not fanout.is_redis_layer(layer):
            return [await layer.receive(self.channel)]
        real = layer.non_local_name(self.channel)
        key = layer.prefix + real
        connection = layer.connection(layer.consistent_hash(real))
        first = await connection.bzpopmin(key, timeout=layer.brpop_timeout)
        if first is None:
            return []
        members = [first[1]]
        members += [member for member, _score in await connection.zpopmin(key, 999)]
        messages = []
        for member in members:
            message = layer.deserialize(member)
            message.pop("__asgi_channel__", None)
            messages.append(message)
        return messages

    def handle(self, message: dict):
        if message.get("type") == "chat.events":  # a group commit's share for this process
            for inner in message["events"]:
                self.handle(inner)
            return
        via = message.get("via", "")
        sent_at = message.get("sent_at")
        if sent_at:
            FANOUT_LATENCY.observe(max(0.0, time.time() - sent_at))
        if message.get("type") == "chat.presence":
            self._on_presence(message)
            return
        if message.get("type") == sessions.LOGOUT_MESSAGE:
            sessions.close_session_sockets(self, message)
            return
        room_id, seq = message.get("room"), message.get("seq")
        if via.startswith("room."):
            stream = self.rooms.get(room_id)
            if stream is None:
                return
            if seq is None:  # ephemeral (typing): no order, may be dropped
                data = text_frame(message["text"].encode())
                for sub in stream.subs.values():
                    if sub.buffer is None:
                        sub.conn.write(data)
                WS_EVENTS_DELIVERED.labels(message["event_type"]).inc(len(stream.subs))
                return
            item = Item(seq, text_frame(message["text"].encode()), message["event_type"],
                        message.get("revokes"))
            self.on_seq(stream, item)
        elif via.startswith("user."):
            data = None
            for user_id in message.get("users", ()):
                if via != fanout.user_group(user_id):
                    continue
                for conn in self.users.get(user_id, ()):
                    if seq is not None and room_id in conn.subs:
                        continue  # the room's ordered stream brings it to this socket
                    data = data or text_frame(message["text"].encode())
                    conn.write(data)
                    WS_EVENTS_DELIVERED.labels(message["event_type"]).inc()

    def _on_presence(self, message: dict):
        """Presence changes to local subscribers of the rooms each user shares.

        Big rooms stay cheap: a room followed by more than CHAT_PRESENCE_MAX_SUBSCRIBERS sockets
        on this process gets no presence events (otherwise n people arriving cost n² frames);
        presence is ephemeral and may be dropped (PROTOCOL §2).
        """
        ts = datetime.now(UTC)
        cap = setting("CHAT_PRESENCE_MAX_SUBSCRIBERS", 100)
        for change in message.get("changes", ()):
            user = change["user"]
            base = uuid.uuid4()
            who = SimpleNamespace(pk=user["id"], username=user["username"])
            data = catalogue.presence_changed(who, status=change["status"])
            for room_id in change.get("rooms", ()):
                stream = self.rooms.get(room_id)
                if stream is None or not stream.subs or len(stream.subs) > cap:
                    continue
                envelope = catalogue.envelope(
                    "presence.changed", room_id=room_id, seq=None, actor=user, data=data,
                    ts=ts, id=uuid.uuid5(base, str(room_id)),
                )
                frame = text_frame(fanout.serialize(envelope).encode())
                for sub in stream.subs.values():
                    if sub.buffer is None:
                        sub.conn.write(frame)
                WS_EVENTS_DELIVERED.labels("presence.changed").inc(len(stream.subs))

    # -- maintenance: heartbeats, presence, lost messages, group memberships

    async def _maintenance(self):
        last_groups = last_gaps = last_presence = last_beats = last_rights = time.monotonic()
        while True:
            heartbeat = settings.CHAT_HEARTBEAT_SECONDS
            await asyncio.sleep(min(1.0, heartbeat / 2))
            now = time.monotonic()
            # Each job on its own: a Redis outage failing the presence refresh must not stop
            # the log check that serves the sockets meanwhile.
            # Silent sockets are closed after 2 to 2.33 heartbeats: a walk over every socket
            # each heartbeat / 3, not each second.
            if now - last_beats >= heartbeat / 3:
                last_beats = now
                await self._job(self.check_heartbeats, now, heartbeat)
            if _heap_freed:
                await self._job(trim_heap)
            if now - last_presence >= heartbeat:  # entries live 2.5 heartbeats
                last_presence = now
                await self._job(self.refresh_presence, now)
            if now - last_gaps >= setting("CHAT_GAP_CHECK_SECONDS", 2.0):
                last_gaps = now
                await self._job(self.check_gaps)
            if now - last_rights >= setting("CHAT_RIGHTS_CHECK_SECONDS", 5.0):
                last_rights = now
                await self._job(self.check_versions)
            if now - last_groups >= setting("CHAT_GROUP_REFRESH_SECONDS", 30.0):
                last_groups = now
                await self._job(self.refresh_groups)

    @staticmethod
    async def _job(func, *args):
        try:
            result = func(*args)
            if asyncio.iscoroutine(result):
                await result
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.warning("realtime maintenance: %s failed", func.__name__, exc_info=True)

    def check_heartbeats(self, now, heartbeat):
        if len(self.typing) > 1000 or not self.connections:
            self.typing = {k: v for k, v in self.typing.items() if now - v[0] < 60}
        cutoff = now - 2 * heartbeat
        for conn in [c for c in self.connections if c.last_seen < cutoff and not c.closing]:
            self.loop.create_task(conn.close(CLOSE_HEARTBEAT))

    async def refresh_presence(self, now):
        if self.shutting_down:
            return
        store = presence.backend()
        away_after = setting("CHAT_AWAY_SECONDS", 300)
        entries = [(c.user_id, c.id, c.status(now, away_after))
                   for c in self.connections if not c.closing]
        changes = list(await store.refresh(entries, self.presence_ttl()))
        changes += await store.sweep()
        for user_id, status in changes:
            local = next(iter(self.users.get(user_id, ())), None)
            await self.publish_presence(user_id, local.username if local else None, status)

    async def check_gaps(self):
        """Fill what the channel layer lost: events committed a check ago, still not here."""
        rooms = {r: s for r, s in self.rooms.items() if s.head is not None}
        if not rooms:
            return
        heads = await db(room_heads)(list(rooms))
        for room_id, stream in rooms.items():
            db_last = heads.get(room_id)
            if db_last is None:
                continue
            previous, stream.seen_db_last = stream.seen_db_last, db_last
            if previous is not None and previous > stream.head:
                logger.info("room %s: events up to %s missed by the channel layer; filling",
                            room_id, previous)
                self._schedule_fill(stream, target=previous, grace=0)

    async def refresh_groups(self):
        """Join our groups again: a restarted Redis forgets them."""
        if self.layer is None or self.channel is None:
            return
        groups = [fanout.PRESENCE_GROUP]
        groups += [fanout.room_group(r) for r in list(self.rooms)]
        groups += [fanout.user_group(u) for u in list(self.users)]
        async with self.redis_slots:
            await fanout.group_add_many(self.layer, groups, self.channel)

    async def group(self, op: str, group: str):
        """group_add / group_discard our process channel, within the concurrency bound."""
        async with self.redis_slots:
            await getattr(self.layer, op)(group, self.channel)

    @staticmethod
    async def _quietly(awaitable):
        try:
            await awaitable
        except Exception:
            logger.warning("channel layer call failed", exc_info=True)


def _usernames(user_ids) -> dict[int, str]:
    from django.contrib.auth import get_user_model

    return dict(get_user_model().objects.filter(pk__in=user_ids).values_list("pk", "username"))


_hubs = PerLoop(lambda: Hub(asyncio.get_running_loop()))


def get_hub() -> Hub:
    """This event loop's hub (one per server process)."""
    return _hubs.get()


async def shutdown(code: int = CLOSE_RESTART):
    """Close every socket of this process with `code` (chatproject.serve calls it on SIGTERM)."""
    hub = _hubs.peek()
    if hub is not None:
        await hub.shutdown(code)
