"""The hub's periodic jobs: heartbeats, presence, lost messages, rights, group memberships."""

from __future__ import annotations

import asyncio
import logging
import time

from django.conf import settings

from .connection import CLOSE_HEARTBEAT, trim_heap_if_freed
from .dbpool import db
from .selectors import room_heads

logger = logging.getLogger(__name__)


async def run(hub):
    last_groups = last_gaps = last_presence = last_beats = last_rights = time.monotonic()
    while True:
        heartbeat = settings.CHAT_HEARTBEAT_SECONDS
        await asyncio.sleep(min(1.0, heartbeat / 2))
        now = time.monotonic()
        # Each job on its own: a Redis outage failing the presence refresh must not stop the
        # log check that serves the sockets meanwhile.
        # Silent sockets are closed after 2 to 2.33 heartbeats: a walk over every socket each
        # heartbeat / 3, not each second.
        if now - last_beats >= heartbeat / 3:
            last_beats = now
            await _job(check_heartbeats, hub, now, heartbeat)
        await _job(trim_heap_if_freed)
        if now - last_presence >= heartbeat:  # entries live 2.5 heartbeats
            last_presence = now
            await _job(hub.presence.refresh, now)
        if now - last_gaps >= settings.CHAT_GAP_CHECK_SECONDS:
            last_gaps = now
            await _job(check_gaps, hub)
        if now - last_rights >= settings.CHAT_RIGHTS_CHECK_SECONDS:
            last_rights = now
            await _job(hub.access.check_versions)
        if now - last_groups >= settings.CHAT_GROUP_REFRESH_SECONDS:
            last_groups = now
            await _job(hub.refresh_groups)


async def _job(func, *args):
    try:
        result = func(*args)
        if asyncio.iscoroutine(result):
            await result
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.warning("realtime maintenance: %s failed", func.__name__, exc_info=True)


def check_heartbeats(hub, now, heartbeat):
    """Close the sockets silent for two heartbeats; forget old typing throttles."""
    if len(hub.typing) > 1000 or not hub.connections:
        hub.typing = {k: v for k, v in hub.typing.items() if now - v[0] < 60}
    cutoff = now - 2 * heartbeat
    for conn in [c for c in hub.connections if c.last_seen < cutoff and not c.closing]:
        hub.loop.create_task(conn.close(CLOSE_HEARTBEAT))


async def check_gaps(hub):
    """Fill what the channel layer lost: events committed a check ago, still not here."""
    rooms = {r: s for r, s in hub.rooms.items() if s.head is not None}
    if not rooms:
        return
    heads = await db(room_heads)(list(rooms))
    for room_id, stream in rooms.items():
        db_last = heads.get(room_id)
        if db_last is None:
            continue
        lost = stream.lost(db_last)
        if lost is not None:
            logger.info(
                "room %s: events up to %s missed by the channel layer; filling", room_id, lost
            )
            hub.schedule_fill(stream, target=lost, grace=0)
