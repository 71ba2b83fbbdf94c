"""Fan-out of committed (and ephemeral) events to WebSocket sockets through the channel layer.

The envelope is serialized once here. The text crosses the channel layer once per server
process that has a stake in a group (each process joins `room.<id>` / `user.<id>` with one
process channel), and that process hands it to its local sockets (apps.messaging.hub).
Each group gets its own copy of the message, tagged with `via`, so a process in both the room
group and the banned user's group can tell the room's ordered stream from the direct copy.

Routing only: what crosses Redis beyond the channel layer's API is in apps.events.layer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from apps.core.aio import BackgroundLoop

from .catalogue import CATALOGUE, CREATOR, ROOM, ROOM_AND_TARGET, SELF, SHARED_ROOMS
from .layer import group_send_many, is_redis_layer

logger = logging.getLogger(__name__)

PRESENCE_GROUP = "presence"
# Outside a server, a dispatch waits this long at most for Redis (then it is logged: the
# sockets fill the gap from the log).
DISPATCH_TIMEOUT_SECONDS = 10.0
# Events after which the user named in data.user may no longer follow the room.
REVOKING_TYPES = ("member.banned", "member.left")


def room_group(room_id: int) -> str:
    return f"room.{room_id}"


def user_group(user_id: int) -> str:
    return f"user.{user_id}"


def serialize(envelope: dict) -> str:
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False)


def revoked_user(envelope: dict) -> int | None:
    """The user who loses the room with this event (banned, left or kicked), if any."""
    if envelope["type"] not in REVOKING_TYPES:
        return None
    return ((envelope.get("data") or {}).get("user") or {}).get("id")


def targets(envelope: dict, target_user_ids=()) -> tuple[list[int], list[int]]:
    """(room ids, user ids) that receive this event on the WebSocket."""
    spec = CATALOGUE[envelope["type"]]
    rooms, users = [], list(target_user_ids)
    actor_id = (envelope.get("actor") or {}).get("id")
    data_user = (envelope.get("data") or {}).get("user") or {}
    if spec.fanout in (ROOM, ROOM_AND_TARGET) and envelope["room"] is not None:
        rooms.append(envelope["room"])
    if spec.fanout == ROOM_AND_TARGET and data_user.get("id"):
        users.append(data_user["id"])
    if spec.fanout == CREATOR and actor_id:
        users.append(actor_id)
    if spec.fanout == SELF and data_user.get("id"):
        users.append(data_user["id"])
    if spec.fanout == SHARED_ROOMS and envelope["room"] is not None:
        rooms.append(envelope["room"])
    return rooms, sorted(set(users))


def message_for(envelope: dict, target_user_ids=(), text=None) -> tuple[dict, list[str]]:
    rooms, users = targets(envelope, target_user_ids)
    message = {
        "type": "chat.event",
        "text": text or serialize(envelope),
        "room": envelope["room"],
        "seq": envelope["seq"],
        "event_type": envelope["type"],
        "users": users,
        "revokes": revoked_user(envelope),
        "sent_at": time.time(),
    }
    groups = [room_group(r) for r in rooms] + [user_group(u) for u in users]
    return message, groups


async def adispatch(envelope: dict, *, target_user_ids=()) -> None:
    """Send one event to every group that should see it (one Redis message per process)."""
    layer = get_channel_layer()
    if layer is None:
        return
    message, groups = message_for(envelope, target_user_ids)
    for group in groups:
        await layer.group_send(group, {**message, "via": group})


_server_loop: asyncio.AbstractEventLoop | None = None


def use_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Called by a server process's hub: dispatches from its database threads are handed to
    this loop without waiting (the event is committed; receivers order and gap-fill by seq)."""
    global _server_loop
    _server_loop = loop


def server_loop() -> asyncio.AbstractEventLoop | None:
    """The running event loop of this server process, or None outside a server."""
    loop = _server_loop
    return loop if loop is not None and loop.is_running() else None


def _report(future):
    if not future.cancelled() and future.exception() is not None:
        logger.warning("fan-out failed", exc_info=future.exception())


async def adispatch_many(items) -> None:
    """adispatch for many (envelope, target user ids[, JSON text]) items, in order.

    With channels-redis, a group commit's events cost two round trips in all (apps.events.layer);
    other layers get one group_send per group and event.
    """
    layer = get_channel_layer()
    if layer is None:
        return
    sends = []
    for envelope, target_user_ids, *text in items:
        message, groups = message_for(envelope, target_user_ids, *text)
        sends += [(group, {**message, "via": group}) for group in groups]
    await group_send_many(layer, sends)


# The fan-out loop of a process that runs no server loop (a Celery worker, a command, a
# benchmark, the test process): its Redis connections serve every dispatch.
_process_loop = BackgroundLoop("fanout-loop")


def dispatch_many(items) -> None:
    """Synchronous form of adispatch_many, for services running in a sync context: from a
    server's database thread it is handed to the server loop without waiting; elsewhere, with
    channels-redis, it runs on this process's fan-out loop and is waited for (the next
    dispatch goes out after it, on the same connections: async_to_sync opened a loop, a
    thread and a Redis connection per call, ~10 ms of each delete in bench.deletion). Other
    layers (the in-memory one of embedded mode lives on its receivers' loop) keep
    async_to_sync."""
    items = list(items)
    loop = server_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is not None:  # called on an event loop (the server's): do not block it
        running.create_task(adispatch_many(items)).add_done_callback(_report)
        return
    if loop is not None:
        future = asyncio.run_coroutine_threadsafe(adispatch_many(items), loop)
        future.add_done_callback(_report)
        return
    if is_redis_layer(get_channel_layer()):
        _process_loop.run(adispatch_many(items), DISPATCH_TIMEOUT_SECONDS)
        return
    async_to_sync(adispatch_many)(items)


def dispatch(envelope: dict, *, target_user_ids=()) -> None:
    dispatch_many([(envelope, target_user_ids, None)])


async def apresence(changes: list[dict]) -> None:
    """Presence changes to every server process, many users in one message. Each change is
    {"user": {"id", "username"}, "status", "rooms": [ids of the rooms the user shares]}; each
    process delivers it to its local sockets subscribed to one of those rooms, one envelope
    per room."""
    layer = get_channel_layer()
    if layer is None or not changes:
        return
    await layer.group_send(
        PRESENCE_GROUP,
        {
            "type": "chat.presence",
            "via": PRESENCE_GROUP,
            "changes": changes,
            "sent_at": time.time(),
        },
    )
