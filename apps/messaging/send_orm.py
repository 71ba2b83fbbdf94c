"""The send plan's executor on any other database (SQLite, the embedded mode): the plan's reads
as ORM queries and its writes as multi-row statements (apps.core.sql), in one transaction.

The rules, seqs and answers are apps.messaging.send_plan's, as on PostgreSQL (send_pg); only
the I/O differs: the message ids come back from the INSERT, so the events are built after it.
SQLite has no row locks: its one writer at a time serializes the rooms' writes instead.
"""

from __future__ import annotations

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from apps.attachments import send as attachments
from apps.core.sql import insert_rows, update_by_pk
from apps.events.models import Event
from apps.events.services import record_events, send_events_on_commit
from apps.rooms import services as rooms
from apps.rooms.models import Membership, Room

from . import send_plan as plan
from . import threads
from .models import Message


def read(keys: plan.Keys) -> plan.Reads:
    locked = {
        room.pk: room
        for room in Room.objects.select_for_update(no_key=True)
        .filter(pk__in=keys.room_ids)
        .order_by("pk")
    }
    earlier = {
        (author_id, client_id): (room_id, seq)
        for author_id, client_id, room_id, seq in Message.objects.filter(
            author_id__in=keys.author_ids, client_id__in=keys.client_ids
        ).values_list("author_id", "client_id", "room_id", "seq")
    }
    reply_rooms, reply_roots = threads.reply_targets(keys.reply_ids)
    return plan.Reads(
        locked,
        rooms.post_memberships(locked, keys.author_ids),
        earlier,
        reply_rooms,
        None,
        rooms.blocked_senders(locked.values(), set(keys.author_ids)),
        reply_roots,
        attachments.read(keys.upload_ids),
    )


def _post_stamps(rows) -> None:
    now, membership_ids = rows
    Membership.objects.filter(pk__in=membership_ids).update(last_posted_at=now)


# send_plan.ExtraWrite kind -> its writer.
EXTRA_WRITES = {
    "post_stamps": _post_stamps,
    "threads": threads.write,
    "attachment_links": attachments.link,
}


def write(decision: plan.Decision, reads: plan.Reads) -> dict:
    """Insert the accepted sends' messages and events, raise the rooms' last_seq, run the extra
    writes; {request index: event} (fanned out after commit by record_events)."""
    messages, last = plan.plan_messages(decision, reads)
    update_by_pk(Room, "last_seq", last)
    ids = insert_rows(
        Message, plan.MESSAGE_FIELDS, [plan.message_row(m) for m in messages], returning="id"
    )
    created = plan.created_events(decision, messages, ids, reads.uploads)
    record_events(list(created.values()))
    for extra in plan.extra_writes(decision, messages, reads):
        EXTRA_WRITES[extra.kind](extra.rows)
        if extra.fanout:
            send_events_on_commit(list(extra.fanout))
    return created


def logged_events(wanted) -> dict[tuple[int, int], Event]:
    if not wanted:
        return {}
    query = Q()
    for room_id, seq in wanted:
        query |= Q(room_id=room_id, seq=seq)
    return {(e.room_id, e.seq): e for e in Event.objects.filter(query)}


def send_batch(todo: list[plan.Send], results: list) -> None:
    """Run the batch in one transaction (send_pg.send_batch's contract)."""
    with transaction.atomic():
        reads = read(plan.keys(todo))
        decision = plan.decide(todo, reads, results, timezone.now())
        created = write(decision, reads) if decision.accepted else {}
        plan.answer(decision, created, logged_events(plan.wanted(decision.resends)), results)
