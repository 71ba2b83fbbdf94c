"""Retention (PROTOCOL §6): a room's messages and events older than its retention are removed.

A room keeps `retention_days` days (null: the site default, settings.RETENTION_DAYS; unset:
forever). The purge removes the oldest part of a room's log, a prefix by seq, so the room's
`history_start` (the first seq still held) says exactly what is gone: seqs below it. With each
`message.created` go its message row, the message's reactions and the notifications that quote
it; receipts (`receipt.updated`, no seq) older than the cutoff go too.

Bounds:
- Oldest first, in batches of settings.RETENTION_BATCH_SIZE events, each batch one short
  transaction under the room's lock (a send to the room waits at most one batch), with a
  pause of RETENTION_BATCH_PAUSE_SECONDS between two batches of a room.
- An event Kafka has not acknowledged yet is never removed (nor anything after it in the
  room's log): the bridge's guarantee is that every event reaches the topic. With publishing
  off (no KAFKA_BOOTSTRAP_SERVERS) nothing is ever published, so this guard is off too.
- The purge emits no event (as Matrix and Zulip: retention is a policy, not a deletion
  consumers must replay). Consumers learn a room's policy from `room.updated`
  (`retention_days`) and the site's from their operator; see docs/protocol.md.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from apps.attachments.services import remove_for_seqs as remove_attachments
from apps.core.errors import ServiceError
from apps.events.models import Event, Outbox
from apps.notifications.models import Notification
from apps.rooms.models import Room
from apps.rooms.services import lock_room

from .models import Message, Reaction, ThreadFollow

logger = logging.getLogger(__name__)


@dataclass
class PurgeResult:
    rooms: int = 0
    events: int = 0
    messages: int = 0
    receipts: int = 0


def retention_cutoffs(now: datetime) -> list[tuple[Q, datetime]]:
    """(rooms filter, cutoff) for each retention in use: events before the cutoff are due."""
    site_days = settings.RETENTION_DAYS
    policies = []
    days_in_use = (
        Room.objects.filter(retention_days__isnull=False)
        .order_by()
        .values_list("retention_days", flat=True)
        .distinct()
    )
    for days in days_in_use:
        policies.append((Q(retention_days=days), now - timedelta(days=days)))
    if site_days and site_days >= 1:
        policies.append((Q(retention_days__isnull=True), now - timedelta(days=site_days)))
    return policies


def rooms_due(now: datetime) -> list[int]:
    """Ids of the rooms whose oldest held event (or a receipt) is past their retention.

    One index probe per room: the event at seq = history_start (the log is a gapless range
    from history_start to last_seq), and receipts by (type, ts)."""
    due: set[int] = set()
    for rooms, cutoff in retention_cutoffs(now):
        oldest_is_old = Event.objects.filter(
            room=OuterRef("pk"), seq=OuterRef("history_start"), ts__lt=cutoff
        )
        due.update(
            Room.objects.filter(rooms).filter(Exists(oldest_is_old)).values_list("pk", flat=True)
        )
        due.update(
            Event.objects.filter(
                type="receipt.updated", ts__lt=cutoff, room__in=Room.objects.filter(rooms)
            )
            .order_by()
            .values_list("room_id", flat=True)
            .distinct()
        )
    return sorted(due)


def room_cutoff(room: Room, now: datetime) -> datetime | None:
    """Events before this are past the room's retention; None: the room keeps everything."""
    days = room.retention_days or settings.RETENTION_DAYS
    return now - timedelta(days=days) if days and days >= 1 else None


def _publishing() -> bool:
    return bool(settings.KAFKA_BOOTSTRAP_SERVERS)


def room_purge_batch(*, room_id: int, now: datetime, batch_size: int) -> PurgeResult:
    """Purge at most `batch_size` of the room's oldest events, in one transaction under the
    room's lock. Returns what went; nothing left to do when `events` and `receipts` are 0."""
    result = PurgeResult()
    with transaction.atomic():
        room = lock_room(room_id)
        cutoff = room_cutoff(room, now)
        if cutoff is None:
            return result
        start = room.history_start
        rows = list(
            Event.objects.filter(room_id=room.pk, seq__gte=start)
            .order_by("seq")
            .values_list("seq", "ts")[:batch_size]
        )
        stop = start
        for seq, ts in rows:
            if ts >= cutoff:
                break
            stop = seq + 1
        if _publishing():
            first_unpublished = (
                Outbox.objects.filter(room_id=room.pk, seq__gte=start)
                .order_by("seq")
                .values_list("seq", flat=True)
                .first()
            )
            if first_unpublished is not None:
                stop = min(stop, first_unpublished)
        if stop > start:
            held = {"room_id": room.pk, "seq__gte": start, "seq__lt": stop}
            Notification.objects.filter(**held).delete()
            result.messages = _delete_messages(room.pk, start, stop)
            result.events = _deleted(Event.objects.filter(**held), Event)
            room.history_start = stop
            room.save(update_fields=["history_start"])
        receipts = Event.objects.filter(type="receipt.updated", room_id=room.pk, ts__lt=cutoff)
        if _publishing():
            receipts = receipts.published()
        receipt_ids = list(receipts.order_by("ts").values_list("pk", flat=True)[:batch_size])
        if receipt_ids:
            result.receipts = _deleted(Event.objects.filter(pk__in=receipt_ids), Event)
    return result


def _delete_messages(room_id: int, start: int, stop: int) -> int:
    """Delete the room's messages with start <= seq < stop, their reactions and attachments, and
    the reply_to links to them, in a few statements (the ORM's delete would select the rows
    first and cascade by lists of ids)."""
    held = {"room_id": room_id, "seq__gte": start, "seq__lt": stop}
    Reaction.objects.filter(message__in=Message.objects.filter(**held)).delete()
    # Their files: the rows now, the files from storage once this commits.
    remove_attachments(room_id=room_id, start=start, stop=stop)
    Message.objects.filter(
        reply_to__room_id=room_id, reply_to__seq__gte=start, reply_to__seq__lt=stop
    ).exclude(**held).update(reply_to=None)  # replies that stay lose the link
    # Threads go with their roots (a root's seq is below its replies'): follows, and links.
    ThreadFollow.objects.filter(root__in=Message.objects.filter(**held)).delete()
    Message.objects.filter(
        thread__room_id=room_id, thread__seq__gte=start, thread__seq__lt=stop
    ).exclude(**held).update(thread=None)
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {Message._meta.db_table} WHERE room_id = %s AND seq >= %s AND seq < %s",
            [room_id, start, stop],
        )
        return cursor.rowcount


def _deleted(queryset, model) -> int:
    """Delete the rows; how many of `model` went (not counting cascades)."""
    _, per_model = queryset.delete()
    return per_model.get(model._meta.label, 0)


def room_purge_history(
    *, room_id: int, now: datetime | None = None, batch_size: int | None = None
) -> PurgeResult:
    """Purge everything past the room's retention, batch by batch (each its own transaction)."""
    now = now or timezone.now()
    batch_size = batch_size or settings.RETENTION_BATCH_SIZE
    total = PurgeResult(rooms=1)
    while True:
        result = room_purge_batch(room_id=room_id, now=now, batch_size=batch_size)
        total.events += result.events
        total.messages += result.messages
        total.receipts += result.receipts
        if result.events < batch_size and result.receipts < batch_size:
            return total
        # Between two batches the room's writes run without waiting for the lock.
        time.sleep(settings.RETENTION_BATCH_PAUSE_SECONDS)


def history_purge(*, now: datetime | None = None, batch_size: int | None = None) -> PurgeResult:
    """The periodic job: purge every room that has something past its retention."""
    now = now or timezone.now()
    total = PurgeResult()
    for room_id in rooms_due(now):
        try:
            result = room_purge_history(room_id=room_id, now=now, batch_size=batch_size)
        except ServiceError:  # the room was deleted meanwhile
            continue
        except Exception:
            logger.exception("retention: purging room %s failed", room_id)
            continue
        total.rooms += 1
        total.events += result.events
        total.messages += result.messages
        total.receipts += result.receipts
    if total.events or total.receipts:
        logger.info(
            "retention: %d rooms, %d events, %d messages, %d receipts purged",
            total.rooms,
            total.events,
            total.messages,
            total.receipts,
        )
    return total
