"""Every write to messages and reactions: one function, one transaction, its permission check.

Each service locks the room row first, so a room's writes are serialized and its seq follows
commit order. Each returns the committed Event (its `envelope` is what `ack` carries).

Sending is a plan (apps.messaging.send_plan: the rules, seqs, events and answers, no I/O) run by
one executor per database (send_pg on PostgreSQL, send_orm elsewhere); this module orchestrates
it (message_send, message_send_many, amessage_send_many).
"""

from __future__ import annotations

from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from emoji import EMOJI_DATA

from apps.attachments import services as attachment_files
from apps.core.errors import ServiceError, forbidden, invalid, not_found
from apps.core.sql import (
    Statement,
    combine,
    pg_insert,
    pg_update,
    prepare_statements,
    run,
    update_by_pk,
)
from apps.events import catalogue as ev
from apps.events import seqs
from apps.events.models import Event
from apps.events.services import (
    build_event,
    events_statement,
    fanout_items,
    record_event,
    record_events,
    redact_message_events,
    redaction_statement,
    send_events_on_commit,
)
from apps.notifications.models import Notification
from apps.rooms import services as rooms
from apps.rooms.models import Membership, ModerationAction, Room

from . import send_orm, send_pg, threads
from . import send_plan as plan
from .models import Message, Reaction
from .send_plan import SendRequest, clean_body, clean_client_id  # noqa: F401 (their home)

EMOJI_MAX = 32


def clean_emoji(emoji) -> str:
    """One emoji of the bundled Unicode list (the `emoji` package: sequences, skin tones, flags)."""
    emoji = _emoji_shape(emoji)
    if emoji not in EMOJI_DATA:
        raise invalid("emoji must be a single Unicode emoji")
    return emoji


def _emoji_shape(emoji) -> str:
    if not isinstance(emoji, str) or not emoji or len(emoji) > EMOJI_MAX:
        raise invalid(f"emoji must be a string of 1 to {EMOJI_MAX} characters")
    return emoji


def created_event(message) -> Event:
    """The message.created event that recorded a message."""
    return Event.objects.get(room_id=message.room_id, seq=message.seq)


def get_message_or_404(message_id, user) -> Message:
    """A message the user may see, or not_found (same answer as a missing one)."""
    try:
        message = Message.objects.select_related("room").get(pk=int(message_id))
    except (Message.DoesNotExist, TypeError, ValueError, OverflowError):
        raise not_found("message not found") from None
    rooms.check_can_read(message.room, user, missing="message not found")
    return message


def _sent_before(author, client_id) -> Message | None:
    return Message.objects.filter(author=author, client_id=client_id).only("room_id", "seq").first()


def message_send(*, room, author, body, client_id, reply_to=None, attachments=None) -> Event:
    """Post a message; idempotent on (author, client_id): a resend returns the original event."""
    result = message_send_many([SendRequest(room, author, body, client_id, reply_to, attachments)])[
        0
    ]
    if isinstance(result, Exception):
        raise result
    return result


def message_send_many(requests) -> list[Event | ServiceError]:
    """Post many messages in one transaction (group commit): for each request, in order, its
    message.created Event or the ServiceError that refused it (the others still go through).

    The rooms are locked in id order, then one query each reads the memberships (joined with
    their users), earlier sends with the same (author, client_id) and the reply_to targets;
    the seqs follow the locked rooms' last_seq, and the messages and events go in with one
    INSERT each (send_plan, run by send_pg or send_orm). On PostgreSQL the statements are
    pipelined: the reads share one round trip, the writes and the COMMIT another. A resend,
    in an earlier batch or this one, answers with the original event; one that races a
    concurrent transaction hits the (author, client_id) constraint and the batch is retried
    one send at a time.
    """
    requests = list(requests)
    results, todo = plan.clean(requests)
    if not todo:
        return results
    executor = send_pg if connection.vendor == "postgresql" else send_orm
    try:
        executor.send_batch(todo, results)
    except IntegrityError:
        if len(todo) > 1:
            for send in todo:
                results[send.index] = message_send_many([requests[send.index]])[0]
            return results
        existing = _sent_before(todo[0].author, todo[0].client_id)
        if existing is None:
            raise
        results[todo[0].index] = created_event(existing)
    return results


async def amessage_send_many(conn, requests, admission=None) -> list[Event | ServiceError]:
    """message_send_many on an asyncio psycopg connection (PostgreSQL; see
    apps.messaging.sendqueue): the same plan and statements, run on the event loop
    (send_pg.asend_batch). A resend race, or any database error, is left to the caller (it
    falls back to the thread pool). `admission`, when given, is the rate limiter's answer
    (a future of one refusal or None per request, sendqueue.admit), awaited after the reads:
    a refused request is answered with its refusal and not written."""
    results, todo = plan.clean(list(requests))
    if todo:
        await send_pg.asend_batch(conn, todo, results, admission)
    if admission is not None:
        for index, refusal in enumerate(await admission):
            if refusal is not None:
                results[index] = refusal
    return results


def message_edit(*, message, actor, body) -> Event:
    """Change one's own message."""
    body = clean_body(body)
    with transaction.atomic():
        room = rooms.lock_room(message.room_id)
        message = Message.objects.get(pk=message.pk)
        rooms.check_can_read(room, actor)
        if message.author_id != actor.pk:
            raise forbidden("only the author can edit a message")
        if message.is_deleted:
            raise invalid("the message is deleted")
        rooms.check_can_post(room, actor)
        message.body = body
        message.edited_at = timezone.now()
        message.save(update_fields=["body", "edited_at"])
        return record_event(
            type="message.edited", room=room, actor=actor, data=ev.message_edited(message)
        )


def message_delete(*, message, actor, reason="") -> Event:
    """Delete a message: the author their own, moderators any (recorded in the audit trail).

    Redacts it in the same transaction: the row's body is cleared and every stored event that
    carried its content is rewritten to the redacted form (PROTOCOL §6). On PostgreSQL that is
    three round trips: the lock and the reads (with BEGIN), every write, COMMIT."""
    reason = (reason or "").strip()[:500]
    with transaction.atomic():
        room, message, membership = _lock_for_delete(message, actor)
        rooms.check_can_read(room, actor, membership=membership)
        if message.is_deleted:
            raise invalid("the message is already deleted")
        rooms.check_not_archived(room)
        by_moderator = message.author_id != actor.pk
        if by_moderator and not rooms.can_moderate(room, actor, membership):
            raise forbidden("only the author or a moderator can delete a message")
        audit = (
            [
                ModerationAction(
                    room=room,
                    actor=actor,
                    target_user_id=message.author_id,
                    target_message_id=message.pk,
                    action=ModerationAction.Action.DELETE_MESSAGE,
                    reason=reason,
                )
            ]
            if by_moderator
            else []
        )
        event = messages_redact(
            room=room,
            message_ids=[message.pk],
            actor=actor,
            by_moderator=by_moderator,
            reason=reason,
            audit=audit,
        )[0]
        message.body, message.deleted_at = "", event.ts
        return event


def _lock_for_delete(message, actor) -> tuple[Room, Message, Membership | None]:
    """The message's room locked, and the message and the actor's membership read afresh
    under that lock. On PostgreSQL one round trip (a pipeline, with the transaction's BEGIN):
    the reads run after the lock is granted, so they see every change committed before it."""
    if connection.vendor != "postgresql":
        room = rooms.lock_room(message.room_id)
        found = Message.objects.filter(pk=message.pk).first()
        membership = None if found is None else rooms.get_membership(room, actor)
    else:
        room_rows, message_rows, membership_rows = _pipelined(
            [
                _select(Room, "id = %b FOR NO KEY UPDATE", [message.room_id]),
                _select(Message, "id = %b", [message.pk]),
                _select(Membership, "room_id = %b AND user_id = %b", [message.room_id, actor.pk]),
            ]
        )
        room = Room.from_db(connection.alias, None, room_rows[0]) if room_rows else None
        found = Message.from_db(connection.alias, None, message_rows[0]) if message_rows else None
        membership = (
            Membership.from_db(connection.alias, None, membership_rows[0])
            if membership_rows
            else None
        )
    if room is None:
        raise not_found("room not found")
    if found is None:
        raise not_found("message not found")
    return room, found, membership


def _pipelined(statements: list[Statement]) -> list[list]:
    """PostgreSQL: the statements' rows, in one round trip with whatever psycopg queued before
    them (the BEGIN of the transaction): sent in a pipeline, read once it is synced."""
    import psycopg

    connection.ensure_connection()
    conn = connection.connection
    cursors = [psycopg.Cursor(conn) for _ in statements]
    try:
        with conn.pipeline():
            for cursor, statement in zip(cursors, statements, strict=True):
                cursor.execute(statement.sql, statement.params, prepare=prepare_statements())
        return [cursor.fetchall() for cursor in cursors]
    finally:
        for cursor in cursors:
            cursor.close()


def _select(model, where: str, params: list) -> Statement:
    """SELECT every concrete column of the model's rows (Model.from_db's order)."""
    quote = connection.ops.quote_name
    columns = ", ".join(quote(f.column) for f in model._meta.concrete_fields)
    return Statement(
        f"SELECT {columns} FROM {quote(model._meta.db_table)} WHERE {where}", params, True
    )


def messages_redact(
    *, room, message_ids, actor, by_moderator, reason, audit=(), rename=None
) -> list[Event]:
    """Delete and redact messages of one room: one message.deleted each, the rows' bodies
    cleared and their content events redacted, in one statement on PostgreSQL whatever their
    number.

    Holds the room row lock (the caller's lock_room read `room.last_seq` under it): the new
    events' seqs follow it. The @mention notifications quote the text, so they go too (the
    Kafka consumer also drops them on message.deleted; this makes it so from the commit on).
    `audit`: unsaved ModerationActions written with the rest; `rename`: see
    redaction_statement (PostgreSQL; elsewhere rename_actor does it)."""
    ids = list(message_ids)
    now = timezone.now()
    deleted_by = actor.pk if actor is not None else None
    seq_of, last = seqs.assign({room.pk: room.last_seq}, [room.pk] * len(ids))
    room.last_seq = last.get(room.pk, room.last_seq)
    events = [
        build_event(
            "message.deleted",
            room=room,
            seq=seq,
            actor=actor,
            ts=now,
            data=ev.message_deleted(pk, by_moderator=by_moderator, reason=reason),
        )
        for seq, pk in zip(seq_of, ids, strict=True)
    ]
    if connection.vendor == "postgresql":  # every write in one statement: one round trip
        writes = combine(
            [
                pg_update(Room, "last_seq", {room.pk: room.last_seq}),
                Statement(
                    f"UPDATE {Message._meta.db_table} SET body = '', deleted_at = %b, "
                    "deleted_by_id = %b::bigint WHERE id = ANY(%b::bigint[])",
                    [now, deleted_by, ids],
                ),
                redaction_statement(ids, rename),
                Statement(
                    f"DELETE FROM {Notification._meta.db_table} "
                    "WHERE message_id = ANY(%b::bigint[])",
                    [ids],
                ),
                *([_audit_statement(audit, now)] if audit else []),
                events_statement(events),
                # Last: its RETURNING names the files, removed from storage after the commit.
                attachment_files.delete_statement(ids),
            ]
        )
        # The threads' recount reads the deletion: pipelined after it, in the same round trip.
        connection.ensure_connection()
        with connection.wrap_database_errors, connection.connection.pipeline():
            files, recounted = run([writes, threads.recount_statement(ids)])
        attachment_files.delete_files_on_commit(files)
        send_events_on_commit(fanout_items(events) + threads.recount_items(recounted, actor))
        return events
    ModerationAction.objects.bulk_create(audit)
    Message.objects.filter(pk__in=ids).update(body="", deleted_at=now, deleted_by_id=deleted_by)
    redact_message_events(ids)
    Notification.objects.filter(message_id__in=ids).delete()
    attachment_files.remove_for_messages(ids)  # the rows now, the files after the commit
    update_by_pk(Room, "last_seq", {room.pk: room.last_seq})
    record_events(events)
    send_events_on_commit(threads.recount_items(threads.recount(ids), actor))
    return events


AUDIT_FIELDS = [
    "room_id",
    "actor_id",
    "target_user_id",
    "target_message_id",
    "action",
    "reason",
    "details",
    "created_at",
]


def _audit_statement(actions, now) -> Statement:
    """PostgreSQL: the INSERT of unsaved ModerationActions (to combine with other writes)."""
    for action in actions:
        action.created_at = now
    return pg_insert(
        ModerationAction,
        AUDIT_FIELDS,
        [tuple(getattr(a, name) for name in AUDIT_FIELDS) for a in actions],
    )


def reaction_add(*, message, user, emoji) -> Event:
    """React to a message (once per user, message and emoji)."""
    emoji = clean_emoji(emoji)
    with transaction.atomic():
        room = rooms.lock_room(message.room_id)
        rooms.check_can_post(room, user)
        message = Message.objects.get(pk=message.pk)
        if message.is_deleted:
            raise invalid("the message is deleted")
        if Reaction.objects.filter(message=message, user=user, emoji=emoji).exists():
            raise invalid("you already reacted with this emoji")
        Reaction.objects.create(message=message, user=user, emoji=emoji)
        return record_event(
            type="reaction.added",
            room=room,
            actor=user,
            data=ev.reaction_added(message_id=message.pk, emoji=emoji),
        )


def reaction_remove(*, message, user, emoji) -> Event:
    """Take one's reaction back (any reaction stored, even one from before the emoji list)."""
    emoji = _emoji_shape(emoji)
    with transaction.atomic():
        room = rooms.lock_room(message.room_id)
        rooms.check_can_read(room, user)
        rooms.check_not_archived(room)
        deleted, _ = Reaction.objects.filter(message=message, user=user, emoji=emoji).delete()
        if not deleted:
            raise invalid("you have not reacted with this emoji")
        return record_event(
            type="reaction.removed",
            room=room,
            actor=user,
            data=ev.reaction_removed(message_id=message.pk, emoji=emoji),
        )
