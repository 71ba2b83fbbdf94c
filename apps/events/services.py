"""Writing events: the room log / outbox row inside the transaction, side effects after commit."""

from __future__ import annotations

import logging

from django.db import connection, transaction
from django.utils import timezone

from . import catalogue
from .catalogue import CATALOGUE
from .models import Event

logger = logging.getLogger(__name__)


def record_event(*, type: str, room=None, actor=None, data: dict, target_user_ids=()) -> Event:
    """Persist one durable event in the current transaction and fan it out after commit.

    Holds the room row lock: seq allocation is serialized per room, so seq has no gaps and
    follows commit order. Callers lock the room first (Room.objects.select_for_update()) when
    they read state the event depends on.
    """
    spec = CATALOGUE[type]
    if not spec.persisted:
        raise ValueError(f"{type} is ephemeral; use emit_ephemeral")
    if not connection.in_atomic_block:
        raise RuntimeError("record_event must run inside transaction.atomic()")

    seq = None
    if spec.seq:
        seq = _next_seq(room.pk)
        room.last_seq = seq
    now = timezone.now()
    event = Event(type=type, room=room, seq=seq, actor=actor, ts=now)
    event.envelope = catalogue.envelope(
        type,
        room_id=room.pk if room is not None else None,
        seq=seq,
        actor=actor,
        data=data,
        ts=now,
        id=event.id,
    )
    event.save(force_insert=True)
    send_event_on_commit(event.envelope, target_user_ids=target_user_ids)
    return event


def _next_seq(room_id: int) -> int:
    """Hand out the room's next seq: one statement that takes (or keeps) the row lock."""
    from apps.rooms.models import Room

    table = connection.ops.quote_name(Room._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET last_seq = last_seq + 1 WHERE id = %s RETURNING last_seq",
            [room_id],
        )
        row = cursor.fetchone()
    if row is None:
        raise Room.DoesNotExist(f"room {room_id} does not exist")
    return row[0]


def send_event_on_commit(envelope: dict, *, target_user_ids=()) -> None:
    """After commit: fan the event out to sockets and wake the Kafka publisher.

    Nothing is sent for a transaction that rolls back. A failure here loses nothing: the row
    is committed, sockets fill gaps from the log and the outbox sweep publishes it.
    """
    from . import fanout, outbox

    def after_commit():
        try:
            fanout.dispatch(envelope, target_user_ids=target_user_ids)
        except Exception:  # Redis down: sockets recover from the event log
            logger.warning("fan-out failed for event %s", envelope["id"], exc_info=True)
        if CATALOGUE[envelope["type"]].kafka:
            outbox.kick_publisher_soon()

    transaction.on_commit(after_commit, robust=True)
