"""A subscription's replay (PROTOCOL §3, `subscribe` with `since`): the log read a chunk at a
time and written as fast as the client reads, so a replay never holds all its events at once
and a client that stops reading is dropped as too slow."""

from __future__ import annotations

from django.conf import settings

from apps.core.wsframe import text_frame
from apps.events.fanout import serialize

from .dbpool import db
from .selectors import events_after

CHUNK = 100  # events read from the log per query of a replay


def first_chunk() -> int:
    """Events to read first: one more than may be sent tells whether the replay is truncated."""
    return min(CHUNK, settings.CHAT_REPLAY_LIMIT + 1)


async def write(hub, sub, rows, *, head: int, since: int | None):
    """Write `rows` (the first chunk, read with first_chunk()) and the chunks after it, up to
    `head` and CHAT_REPLAY_LIMIT events: (events sent, last seq sent, truncated), or None if
    the subscription ended meanwhile (unsubscribed, closed, or dropped here as too slow)."""
    conn, room_id = sub.conn, sub.room_id
    limit = settings.CHAT_REPLAY_LIMIT
    asked = first_chunk()
    sent, last, truncated = 0, since, False
    while rows:
        take = rows[: limit - sent]
        for seq, envelope in take:
            # Every byte counts in the socket's backlog: wait for the client to read.
            if conn.owes_much():
                if not await conn.drained(settings.CHAT_REPLAY_WAIT_SECONDS):
                    hub.drop(sub)
                    if not conn.closing:
                        conn.too_slow()
                    return None
                if conn.subs.get(room_id) is not sub:
                    return None
            if not conn.write(text_frame(serialize(envelope).encode())):
                hub.drop(sub)  # too slow: the socket is being closed
                return None
            last = seq
        sent += len(take)
        if len(rows) > len(take):
            truncated = True
            break
        if len(rows) < asked:
            break
        asked = min(CHUNK, limit - sent + 1)
        rows = await db(events_after)(room_id, last, head, asked)
        if conn.subs.get(room_id) is not sub:
            return None
    return sent, last, truncated
