"""The hub's reader: the process channel's messages, handed to the streams and sockets."""

from __future__ import annotations

import asyncio
import logging
import time

from apps.core.wsframe import text_frame
from apps.events import fanout
from apps.events import layer as layers
from apps.events.observability import FANOUT_LATENCY, WS_EVENTS_DELIVERED
from apps.users import sessions

from .connection import corked
from .streams import Item

logger = logging.getLogger(__name__)


async def run(hub):
    """Receive and handle until cancelled; after a failed receive (Redis restarted?) join the
    groups again before the next."""
    backoff = 0.1
    groups_stale = False
    while True:
        if groups_stale:
            # A restarted Redis forgot our group memberships, and the first attempt to join
            # again may meet a pooled connection to the old server: retry until the joins
            # succeed, else this process would receive nothing until the periodic refresh.
            try:
                await hub.refresh_groups()
                groups_stale = False
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("re-joining channel-layer groups failed; retrying", exc_info=True)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
        try:
            messages = await layers.receive_many(hub.layer, hub.channel)
            backoff = 0.1
        except asyncio.CancelledError:
            raise
        except layers.IDLE_TIMEOUTS:  # an idle blocking pop outlived the timeout
            continue
        except Exception:
            logger.warning("channel layer receive failed; retrying", exc_info=True)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
            groups_stale = True
            continue
        handle_all(hub, messages)


def handle_all(hub, messages: list[dict]) -> None:
    """Messages for this process, from Redis (run) or handed over by this process's own
    group_send_many (apps.events.layer.receive_locally)."""
    with corked():  # one write per socket for what these messages bring it
        for message in messages:
            try:
                handle(hub, message)
            except Exception:
                logger.exception("could not handle channel message %r", message.get("type"))


def handle(hub, message: dict):
    """One channel-layer message (apps.events.fanout's shapes)."""
    if message.get("type") == "chat.events":  # a group commit's share for this process
        for inner in message["events"]:
            handle(hub, inner)
        return
    via = message.get("via", "")
    sent_at = message.get("sent_at")
    if sent_at:
        FANOUT_LATENCY.observe(max(0.0, time.time() - sent_at))
    if message.get("type") == "chat.presence":
        hub.presence.deliver(message)
        return
    if message.get("type") == sessions.LOGOUT_MESSAGE:
        hub.access.close_sessions(message)
        return
    room_id, seq = message.get("room"), message.get("seq")
    if via.startswith("room."):
        stream = hub.rooms.get(room_id)
        if stream is None:
            return
        if seq is None:  # ephemeral (typing): no order, may be dropped
            stream.broadcast(text_frame(message["text"].encode()), message["event_type"])
            return
        item = Item(
            seq, text_frame(message["text"].encode()), message["event_type"], message.get("revokes")
        )
        hub.apply(stream, stream.on_seq(item))
    elif via.startswith("user."):
        data = None
        for user_id in message.get("users", ()):
            if via != fanout.user_group(user_id):
                continue
            for conn in hub.users.get(user_id, ()):
                if seq is not None and room_id in conn.subs:
                    continue  # the room's ordered stream brings it to this socket
                data = data or text_frame(message["text"].encode())
                conn.write(data)
                WS_EVENTS_DELIVERED.labels(message["event_type"]).inc()
