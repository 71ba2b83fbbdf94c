"""Process-level fan-out: the hub that hands events to this process's sockets in seq order.

Design (PROTOCOL §3, "fan-out that scales"):

- One channel-layer channel per server process. On the first local subscription to room R the
  process joins the group `room.R` with that channel (and `user.U` for users with a local socket,
  and `presence`). An event therefore crosses Redis once per interested process, already
  serialized; the reader task below hands the same bytes to every local socket.
- Each followed room is a RoomStream (apps.messaging.streams: the ordering rules, no I/O); the
  hub does what they ask: drop the subscriptions an event revoked, fill gaps from the log.
- A periodic check compares each followed room's committed last_seq with the stream's head
  and fills what the channel layer lost (Redis restart, channel capacity): the event log is
  the source of truth.
- Its parts: connection (one socket: writer, backpressure), streams (per-room ordering),
  reader (channel-layer messages), presence_relay, access (logouts, rights changes),
  maintenance (periodic jobs), selectors (the log reads), dbpool (the database threads).

Why ~410 lines: the hub's lifecycle, subscribe, revoke and gap fill share its state; every
part that does not (the reader, replay, presence, access, maintenance, the socket, the
ordering rules) is its own module.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time

from channels.layers import get_channel_layer
from django.conf import settings

from apps.core.aio import PerLoop
from apps.core.errors import ServiceError
from apps.core.redis import guarded
from apps.events import fanout
from apps.events import layer as layers
from apps.events.observability import WS_OPEN_SOCKETS, WS_SUBSCRIPTIONS
from apps.users import presence

from . import maintenance, reader
from . import replay as replays
from .access import AccessWatch
from .connection import CLOSE_RESTART, Connection, heap_freed
from .dbpool import db
from .presence_relay import PresenceRelay
from .presence_relay import ttl as presence_ttl
from .selectors import events_after, history_bounds, replay
from .streams import Item, RoomStream, Step, Subscription

logger = logging.getLogger(__name__)


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
        self.redis_slots = asyncio.Semaphore(settings.CHAT_REDIS_CONCURRENCY)
        # (user id, room id) -> (monotonic time, state) of the last typing event sent
        self.typing: dict[tuple[int, int], tuple[float, bool]] = {}
        self.presence = PresenceRelay(self)
        self.access = AccessWatch(self)
        # user id -> the newest rights version this process heard of (apps.users.rights)
        self.versions: dict[int, int] = {}

    # -- lifecycle

    async def start(self):
        if self.started is None:
            self.started = self.loop.create_future()
            try:
                if self.layer is not None:
                    self.channel = await self.layer.new_channel("realtime")
                    # This process's own events reach its sockets without Redis.
                    layers.receive_locally(self.channel, functools.partial(reader.handle_all, self))
                    # Redis down at start: the reader joins again once it is back.
                    await self._quietly(
                        self.redis_call(self.group("group_add", fanout.PRESENCE_GROUP))
                    )
                    self.tasks.append(self.loop.create_task(reader.run(self)))
                self.tasks.append(self.loop.create_task(maintenance.run(self)))
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
        await asyncio.gather(
            *(c.close(code) for c in list(self.connections)), return_exceptions=True
        )

    async def redis_call(self, awaitable):
        """Await a Redis call on a socket's path (apps.core.redis.Guard: bounded by a timeout,
        skipped for a while after a failure)."""
        return await guarded(awaitable)

    # -- sockets

    async def attach(self, conn: Connection):
        """Register a socket; False if the user already has CHAT_MAX_SOCKETS_PER_USER open."""
        await self.start()
        limit = settings.CHAT_MAX_SOCKETS_PER_USER
        try:
            changed, status, count = await self.redis_call(
                presence.backend().connect(
                    conn.user_id,
                    conn.id,
                    conn.status(time.monotonic()),
                    presence_ttl(),
                    limit,
                )
            )
        except Exception:
            # Presence (Redis) is down: serve the socket anyway, with this process's count as
            # the socket limit; the next presence refresh registers it once Redis is back.
            logger.warning(
                "presence unavailable; accepting socket %s on the local count",
                conn.id,
                exc_info=True,
            )
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
                    self.redis_call(self.group("group_add", fanout.user_group(conn.user_id)))
                )
        sockets.add(conn)
        if changed == 1:
            await self.presence.publish(conn.user_id, conn.username, status)
        return True

    async def detach(self, conn: Connection):
        if conn not in self.connections:
            return
        if conn.ext is not None and conn.ext.written > 1024 * 1024:
            heap_freed()  # what it held may have been a big backlog
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
                    await self._quietly(
                        self.group("group_discard", fanout.user_group(conn.user_id))
                    )
        if not self.shutting_down:
            try:
                status = await presence.backend().disconnect(conn.user_id, conn.id)
            except Exception:
                logger.warning("presence: could not remove socket %s", conn.id, exc_info=True)
                status = None
            if status is not None:
                await self.presence.publish(conn.user_id, conn.username, status)

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
                logger.warning(
                    "could not join room %s's group; following it from the log",
                    room_id,
                    exc_info=True,
                )
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
        try:
            rows, head, history_start = await db(replay)(
                user, room_id, since, replays.first_chunk()
            )
        except BaseException:
            self.drop(sub)
            raise
        if conn.subs.get(room_id) is not sub:  # unsubscribed or closed meanwhile
            return
        if stream.head is None:
            self.apply(stream, stream.set_base(head))
        written = await replays.write(self, sub, rows, head=head, since=since)
        if written is None:
            return
        sent, last, truncated = written
        last_seq = last if truncated else head
        conn.write_json(
            {
                "type": "subscribed",
                "ref": ref,
                "room": room_id,
                "last_seq": last_seq,
                "truncated": truncated,
                "head": head,
                "history_start": history_start,
            }
        )
        if sent:
            conn.replay_end = conn.position()
        sub.last = head
        missing = []
        if sub.stream_from is not None and sub.stream_from > sub.last:
            # Another subscriber set the room's stream base above our snapshot: fetch between.
            missing = await db(events_after)(room_id, sub.last, sub.stream_from)
            if conn.subs.get(room_id) is not sub:
                return
        for item in [Item.from_envelope(envelope) for _seq, envelope in missing]:
            if sub.push(item) and sub.ended:
                return self.revoke(sub, item)
        while sub.buffer:
            item = sub.buffer.pop(0)
            if sub.push(item) and sub.ended:
                return self.revoke(sub, item)
        sub.buffer = None

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

    def revoke(self, sub: Subscription, item: Item) -> None:
        """The subscription's user lost the room with `item` (banned, left, kicked)."""
        self.drop(sub)
        sub.conn.write_json(
            {"type": "unsubscribed", "ref": None, "room": sub.room_id, "reason": item.reason}
        )

    async def _leave_room(self, room_id):
        if room_id not in self.rooms:  # not followed again in the meantime
            await self._quietly(self.group("group_discard", fanout.room_group(room_id)))

    # -- the room streams: what their steps leave to do

    def apply(self, stream: RoomStream, step: Step | None) -> None:
        if step is None:
            return
        for sub, item in step.revoked:
            self.revoke(sub, item)
        if step.fill:
            self.schedule_fill(stream)

    def schedule_fill(self, stream: RoomStream, target: int | None = None, grace=None):
        if stream.fill_task is None or stream.fill_task.done():
            stream.fill_task = self.loop.create_task(self._fill(stream, target, grace))

    async def _fill(self, stream: RoomStream, target, grace):
        """Fill the stream's gap from the event log (after a grace for late channel messages)."""
        await asyncio.sleep(settings.CHAT_GAP_GRACE_SECONDS if grace is None else grace)
        for _attempt in range(100):
            if self.rooms.get(stream.room_id) is not stream or stream.head is None:
                return
            want = stream.fill_target(target)
            if want is None:
                return
            try:
                rows = await db(events_after)(stream.room_id, stream.head, want, 1000)
            except Exception:
                logger.warning("gap fill for room %s failed", stream.room_id, exc_info=True)
                await asyncio.sleep(1)
                continue
            step = stream.from_log(rows)
            if step is None and not await self._skip_purged(stream):
                return
            self.apply(stream, step)

    async def _skip_purged(self, stream: RoomStream) -> bool:
        """Move the stream's head up to history_start - 1 if retention purged the seqs after
        it; True if it moved."""
        try:
            bounds = await db(history_bounds)(stream.room_id)
        except Exception:
            logger.warning("gap fill for room %s failed", stream.room_id, exc_info=True)
            return False
        before = stream.head
        step = None if bounds is None else stream.skip_to(bounds[1])
        if step is None:
            return False
        logger.info(
            "room %s: seqs %s..%s were purged by retention; skipping",
            stream.room_id,
            before + 1,
            stream.head,
        )
        self.apply(stream, step)
        return True

    async def refresh_groups(self):
        """Join our groups again: a restarted Redis forgets them."""
        if self.layer is None or self.channel is None:
            return
        groups = [fanout.PRESENCE_GROUP]
        groups += [fanout.room_group(r) for r in list(self.rooms)]
        groups += [fanout.user_group(u) for u in list(self.users)]
        async with self.redis_slots:
            await layers.group_add_many(self.layer, groups, self.channel)

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


_hubs = PerLoop(lambda: Hub(asyncio.get_running_loop()))


def get_hub() -> Hub:
    """This event loop's hub (one per server process)."""
    return _hubs.get()


async def shutdown(code: int = CLOSE_RESTART):
    """Close every socket of this process with `code` (chatproject.serve calls it on SIGTERM)."""
    hub = _hubs.peek()
    if hub is not None:
        await hub.shutdown(code)
