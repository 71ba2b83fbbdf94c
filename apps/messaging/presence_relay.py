"""Presence between server processes and to this process's sockets (PROTOCOL §2, §3).

Each process publishes the changes its sockets make (batched: one room query and one
channel-layer message per batch, however many sockets come and go) to the `presence` group
every process joins, and delivers what it hears to its local subscribers of the rooms each
user shares, one `presence.changed` envelope per room. Presence is ephemeral: it may be
dropped, and it is, for big rooms (CHAT_PRESENCE_MAX_SUBSCRIBERS).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime
from types import SimpleNamespace

from django.conf import settings

from apps.core.wsframe import text_frame
from apps.events import catalogue, fanout
from apps.users import presence

from .dbpool import db
from .selectors import shared_room_ids, usernames

logger = logging.getLogger(__name__)

BATCH = 500  # users per published message at most
WINDOW = 0.05  # seconds changes gather before a batch goes out


def ttl() -> float:
    """How long a socket's presence entry lives without a refresh (2.5 heartbeats)."""
    return settings.CHAT_HEARTBEAT_SECONDS * 2.5


class PresenceRelay:
    """The presence half of a hub: reads its sockets and rooms, never changes them."""

    def __init__(self, hub):
        self.hub = hub
        self.out: dict[int, tuple[str | None, str]] = {}  # user id -> (username, status)
        self.task: asyncio.Task | None = None

    async def publish(self, user_id, username, status):
        """Queue a presence change; changes within WINDOW go out together."""
        self.out[user_id] = (username, status)
        if self.task is None or self.task.done():
            self.task = self.hub.loop.create_task(self._send())

    async def _send(self):
        await asyncio.sleep(WINDOW)
        while self.out:
            batch = dict(list(self.out.items())[:BATCH])
            for user_id in batch:
                del self.out[user_id]
            try:
                missing = [u for u, (name, _) in batch.items() if name is None]
                names = await db(usernames)(missing) if missing else {}
                rooms = await db(shared_room_ids)(list(batch))
                await fanout.apresence(
                    [
                        {
                            "user": {"id": u, "username": name or names.get(u, "")},
                            "status": status,
                            "rooms": rooms.get(u, []),
                        }
                        for u, (name, status) in batch.items()
                    ]
                )
            except Exception:
                logger.warning("presence: could not publish %d changes", len(batch), exc_info=True)

    def deliver(self, message: dict):
        """Presence changes heard from any process, to local subscribers of the rooms each
        user shares. A room followed by more than CHAT_PRESENCE_MAX_SUBSCRIBERS sockets on this
        process gets none (otherwise n people arriving cost n² frames)."""
        ts = datetime.now(UTC)
        cap = settings.CHAT_PRESENCE_MAX_SUBSCRIBERS
        streams = self.hub.rooms
        for change in message.get("changes", ()):
            user = change["user"]
            base = uuid.uuid4()
            who = SimpleNamespace(pk=user["id"], username=user["username"])
            data = catalogue.presence_changed(who, status=change["status"])
            for room_id in change.get("rooms", ()):
                stream = streams.get(room_id)
                if stream is None or not stream.subs or len(stream.subs) > cap:
                    continue
                envelope = catalogue.envelope(
                    "presence.changed",
                    room_id=room_id,
                    seq=None,
                    actor=user,
                    data=data,
                    ts=ts,
                    id=uuid.uuid5(base, str(room_id)),
                )
                stream.broadcast(
                    text_frame(fanout.serialize(envelope).encode()), "presence.changed"
                )

    async def refresh(self, now: float):
        """Refresh the presence entries of this process's sockets (each heartbeat) and
        publish what changed, including users whose sockets all expired elsewhere."""
        hub = self.hub
        if hub.shutting_down:
            return
        store = presence.backend()
        away_after = settings.CHAT_AWAY_SECONDS
        entries = [
            (c.user_id, c.id, c.status(now, away_after)) for c in hub.connections if not c.closing
        ]
        changes = list(await store.refresh(entries, ttl()))
        changes += await store.sweep()
        for user_id, status in changes:
            local = next(iter(hub.users.get(user_id, ())), None)
            await self.publish(user_id, local.username if local else None, status)
