"""Fan-out of committed (and ephemeral) events to WebSocket sockets through the channel layer.

The envelope is serialized once here; the text crosses the channel layer to the server
processes, which hand it to their local sockets (apps.messaging.realtime).
"""

from __future__ import annotations

import json

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from .catalogue import CATALOGUE, CREATOR, ROOM, ROOM_AND_TARGET, SELF, SHARED_ROOMS


def room_group(room_id: int) -> str:
    return f"room.{room_id}"


def user_group(user_id: int) -> str:
    return f"user.{user_id}"


def serialize(envelope: dict) -> str:
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False)


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


def message_for(envelope: dict, target_user_ids=()) -> tuple[dict, list[str]]:
    rooms, users = targets(envelope, target_user_ids)
    message = {
        "type": "chat.event",
        "text": serialize(envelope),
        "room": envelope["room"],
        "seq": envelope["seq"],
        "event_type": envelope["type"],
        "users": users,
    }
    groups = [room_group(r) for r in rooms] + [user_group(u) for u in users]
    return message, groups


async def adispatch(envelope: dict, *, target_user_ids=()) -> None:
    """Send one event to every group that should see it."""
    layer = get_channel_layer()
    if layer is None:
        return
    message, groups = message_for(envelope, target_user_ids)
    for group in groups:
        await layer.group_send(group, message)


def dispatch(envelope: dict, *, target_user_ids=()) -> None:
    """Synchronous form of adispatch, for services running in a sync context."""
    async_to_sync(adispatch)(envelope, target_user_ids=target_user_ids)
