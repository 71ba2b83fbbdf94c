"""Group commit for the WebSocket `message.send` frames of one server process.

A send waits for a free database thread, never for a timer: when one is free, every send that
queued meanwhile for the same lane (a share of the rooms) goes into one transaction
(services.message_send_many, through chatproject.batching.Batcher). At a few sends a second each send runs alone, as before; under
load, one batch's round trips, lock and commit are shared by tens of sends, so a process
commits many times more messages per second and a busy room's lock is taken once per batch
instead of once per message.

Each socket handles its frames one at a time, so a client's sends still commit in the order it
sent them; sends from different clients to one room commit in batch order, and the room's seq
is their order for everyone. A refused send gets its own error; a database failure fails the
batch it was in (each socket answers `unavailable`, and the client resends with the same
client_id).
"""

from __future__ import annotations

from django.conf import settings

from apps.events.observability import SEND_BATCH_SECONDS, SEND_BATCH_SIZE
from chatproject.batching import Batcher, PerLoop

from .services import SendRequest, message_send_many


def _observe(size: int, seconds: float) -> None:
    SEND_BATCH_SIZE.observe(size)
    SEND_BATCH_SECONDS.observe(seconds)


def _new_lanes() -> list[Batcher]:
    from .realtime import db

    lanes = max(1, getattr(settings, "CHAT_SEND_BATCH_CONCURRENCY", 2))
    return [
        Batcher(db(message_send_many), max_batch=getattr(settings, "CHAT_SEND_BATCH_MAX", 200),
                observe=_observe)
        for _ in range(lanes)
    ]


_lanes = PerLoop(_new_lanes)


async def send(request: SendRequest):
    """The request's message.created Event; raises the ServiceError that refused it.

    Rooms are spread over CHAT_SEND_BATCH_CONCURRENCY lanes, each with one transaction in
    flight: two transactions of a process never wait for each other's room locks."""
    lanes = _lanes.get()
    room_id = getattr(request.room, "pk", request.room)
    lane = lanes[room_id % len(lanes)] if isinstance(room_id, int) else lanes[0]
    return await lane.submit(request)
