"""Every write to messages and reactions: one function, one transaction, its permission check.

Each service locks the room row first, so a room's writes are serialized and its seq follows
commit order. Each returns the committed Event (its `envelope` is what `ack` carries).
"""

from __future__ import annotations

import unicodedata
import uuid
from contextlib import contextmanager
from typing import NamedTuple

import psycopg

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from apps.events import catalogue as ev
from apps.events.models import Event
from apps.events.services import allocate_seqs, build_event, record_event, record_events
from apps.rooms import services as rooms
from apps.rooms.models import Membership, ModerationAction, Room
from chatproject.bulk import insert_rows, update_by_pk
from chatproject.errors import ServiceError, forbidden, invalid, not_found

from .models import Message, Reaction

EMOJI_MAX = 32


def clean_body(body) -> str:
    """Non-empty, at most CHAT_MESSAGE_MAX_LENGTH characters, no control characters."""
    if not isinstance(body, str):
        raise invalid("body must be a string")
    if not body.strip():
        raise invalid("body must not be empty")
    if len(body) > settings.CHAT_MESSAGE_MAX_LENGTH:
        raise ServiceError(
            "too_large", f"body is longer than {settings.CHAT_MESSAGE_MAX_LENGTH} characters"
        )
    for char in body:
        if char in "\n\t":
            continue
        if unicodedata.category(char) in ("Cc", "Cs") or char in "\u2028\u2029":
            raise invalid("body contains control characters")
    return body


def clean_emoji(emoji) -> str:
    if not isinstance(emoji, str) or not emoji or len(emoji) > EMOJI_MAX:
        raise invalid(f"emoji must be a string of 1 to {EMOJI_MAX} characters")
    if any(unicodedata.category(c) in ("Cc", "Cs", "Zs", "Zl", "Zp") for c in emoji):
        raise invalid("emoji must not contain spaces or control characters")
    return emoji


def clean_client_id(client_id) -> uuid.UUID:
    if isinstance(client_id, uuid.UUID):
        return client_id
    try:
        return uuid.UUID(str(client_id))
    except (ValueError, TypeError, AttributeError):
        raise invalid("client_id must be a UUID") from None


def created_event(message) -> Event:
    """The message.created event that recorded a message."""
    return Event.objects.get(room_id=message.room_id, seq=message.seq)


def get_message_or_404(message_id, user) -> Message:
    """A message the user may see, or not_found (same answer as a missing one)."""
    try:
        message = Message.objects.select_related("room").get(pk=int(message_id))
    except (Message.DoesNotExist, TypeError, ValueError, OverflowError):
        raise not_found("message not found") from None
    if not rooms.can_view(message.room, user):
        raise not_found("message not found")
    return message


def _sent_before(author, client_id) -> Message | None:
    return Message.objects.filter(author=author, client_id=client_id).only("room_id", "seq").first()


class SendRequest(NamedTuple):
    """One `message.send`: `room` is a Room or a room id; the fields are checked by
    message_send_many (a bad one is that request's error)."""

    room: object
    author: object
    body: object
    client_id: object
    reply_to: object = None


class _Send(NamedTuple):
    index: int
    room_id: int
    author: object
    body: str
    client_id: uuid.UUID
    reply_to: object


def message_send(*, room, author, body, client_id, reply_to=None) -> Event:
    """Post a message; idempotent on (author, client_id): a resend returns the original event."""
    result = message_send_many([SendRequest(room, author, body, client_id, reply_to)])[0]
    if isinstance(result, Exception):
        raise result
    return result


def message_send_many(requests) -> list[Event | ServiceError]:
    """Post many messages in one transaction (group commit): for each request, in order, its
    message.created Event or the ServiceError that refused it (the others still go through).

    The rooms are locked in id order, then one query each reads the memberships (joined with
    their users), earlier sends with the same (author, client_id) and the reply_to targets;
    the seqs of every room come from one UPDATE and the messages and events from one INSERT
    each. A resend, in an earlier batch or this one, answers with the original event; one that
    races a concurrent transaction hits the (author, client_id) constraint and the batch is
    retried one send at a time.
    """
    requests = list(requests)
    results: list = [None] * len(requests)
    todo = []
    for index, request in enumerate(requests):
        try:
            todo.append(_Send(
                index,
                _room_id(request.room),
                request.author,
                clean_body(request.body),
                clean_client_id(request.client_id),
                request.reply_to,
            ))
        except ServiceError as exc:
            results[index] = exc
    if not todo:
        return results
    try:
        with _pipeline(), transaction.atomic():
            _send_locked(todo, results)
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


@contextmanager
def _pipeline():
    """PostgreSQL: psycopg's pipeline mode for the batch, so its statements share round trips:
    the reads (and BEGIN) in one, the writes and the COMMIT in another. Errors come out as
    Django's database errors, as from the ORM."""
    if connection.vendor != "postgresql":
        yield
        return
    connection.ensure_connection()
    with connection.wrap_database_errors, connection.connection.pipeline():
        yield


def _room_id(room) -> int:
    room_id = getattr(room, "pk", room)
    if isinstance(room_id, bool) or not isinstance(room_id, int):
        raise not_found("room not found")
    return room_id


class _Reads(NamedTuple):
    rooms: dict  # locked rooms by id
    memberships: dict  # (room id, user id) -> membership with its user
    earlier: dict  # (author id, client id) -> (room id, seq) of a message sent before
    reply_rooms: dict  # reply_to message id -> its room id
    message_ids: list | None  # ids drawn for the new messages (PostgreSQL)


def _send_locked(todo: list[_Send], results: list) -> None:
    room_ids = sorted({send.room_id for send in todo})
    author_ids = sorted({send.author.pk for send in todo})
    client_ids = list({send.client_id for send in todo})
    reply_ids = sorted({
        s.reply_to for s in todo if type(s.reply_to) is int and 0 < s.reply_to < 2**63
    })
    read = _read_pipelined if connection.vendor == "postgresql" else _read_orm
    reads = read(room_ids, author_ids, client_ids, reply_ids, len(todo))
    locked, memberships, earlier, reply_rooms = reads[:4]
    accepted: list[_Send] = []
    first_send: dict[tuple, _Send] = {}
    resends: dict[int, tuple[int, int] | _Send] = {}
    for send in todo:
        key = (send.author.pk, send.client_id)
        if key in earlier or key in first_send:
            resends[send.index] = earlier.get(key) or first_send[key]
            continue
        room = locked.get(send.room_id)
        try:
            if room is None:
                raise not_found("room not found")
            rooms.check_can_post(room, send.author, memberships.get((room.pk, send.author.pk)))
            if send.reply_to is not None:
                if isinstance(send.reply_to, bool) or not isinstance(send.reply_to, int):
                    raise invalid("reply_to must be a message id")
                if reply_rooms.get(send.reply_to) != room.pk:
                    raise invalid("reply_to is not a message of this room")
        except ServiceError as exc:
            results[send.index] = exc
            continue
        first_send[key] = send
        accepted.append(send)
    created = _create(accepted, locked, reads.message_ids) if accepted else {}
    for send in accepted:
        results[send.index] = created[send.index]
    for index, event in _resent_events(resends, created).items():
        results[index] = event


def _read_orm(room_ids, author_ids, client_ids, reply_ids, count) -> _Reads:
    """The rooms locked in id order, then one query for each of the other reads."""
    locked = {
        room.pk: room
        for room in Room.objects.select_for_update().filter(pk__in=room_ids).order_by("pk")
    }
    earlier = {
        (author_id, client_id): (room_id, seq)
        for author_id, client_id, room_id, seq in Message.objects.filter(
            author_id__in=author_ids, client_id__in=client_ids
        ).values_list("author_id", "client_id", "room_id", "seq")
    }
    reply_rooms = (
        dict(Message.objects.filter(pk__in=reply_ids).values_list("id", "room_id"))
        if reply_ids else {}
    )
    return _Reads(locked, rooms.post_memberships(locked, author_ids), earlier, reply_rooms,
                  None)


def _read_pipelined(room_ids, author_ids, client_ids, reply_ids, count) -> _Reads:
    """PostgreSQL: the same reads, plus `count` message ids from the table's sequence, sent
    together in one round trip (the caller runs in a pipeline: see message_send_many)."""
    user_model = Membership._meta.get_field("user").related_model
    room_cols, member_cols, user_cols = (_columns(m) for m in (Room, Membership, user_model))
    message_table = Message._meta.db_table
    statements = [
        (f"SELECT {room_cols} FROM {Room._meta.db_table} WHERE id = ANY(%b) "
         "ORDER BY id FOR UPDATE", [room_ids]),
        (f"SELECT {_columns(Membership, 'm')}, {_columns(user_model, 'u')} "
         f"FROM {Membership._meta.db_table} m JOIN {user_model._meta.db_table} u "
         "ON u.id = m.user_id WHERE m.room_id = ANY(%b) AND m.user_id = ANY(%b)",
         [room_ids, author_ids]),
        (f"SELECT author_id, client_id, room_id, seq FROM {message_table} "
         "WHERE author_id = ANY(%b) AND client_id = ANY(%b)", [author_ids, client_ids]),
        (f"SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %b)",
         [message_table, count]),
    ]
    if reply_ids:
        statements.append(
            (f"SELECT id, room_id FROM {message_table} WHERE id = ANY(%b)", [reply_ids]))
    cursors = []
    for sql, params in statements:
        cursor = psycopg.Cursor(connection.connection)
        cursor.execute(sql, params)
        cursors.append(cursor)
    rows = [cursor.fetchall() for cursor in cursors]
    for cursor in cursors:
        cursor.close()
    db = connection.alias
    locked = {r[0]: Room.from_db(db, None, r) for r in rows[0]}
    split = len(member_cols.split(", "))
    memberships = {}
    for row in rows[1]:
        membership = Membership.from_db(db, None, row[:split])
        membership.user = user_model.from_db(db, None, row[split:])
        memberships[(membership.room_id, membership.user_id)] = membership
    earlier = {(a, c): (r, s) for a, c, r, s in rows[2]}
    ids = [row[0] for row in rows[3]]
    return _Reads(locked, memberships, earlier, dict(rows[4]) if reply_ids else {}, ids)


def _columns(model, alias=None) -> str:
    """Every concrete column of the model, in field order (what from_db expects)."""
    prefix = f"{alias}." if alias else ""
    return ", ".join(f'{prefix}"{f.column}"' for f in model._meta.concrete_fields)


def _create(accepted: list[_Send], locked: dict, message_ids) -> dict[int, Event]:
    """Insert the accepted sends' messages and events; {request index: event}.

    With `message_ids` (PostgreSQL) nothing here waits for an answer: the seqs follow the
    locked rooms' last_seq, and the statements go out with the COMMIT."""
    counts: dict[int, int] = {}
    for send in accepted:
        counts[send.room_id] = counts.get(send.room_id, 0) + 1
    if message_ids is None:
        next_seq = allocate_seqs(counts)
    else:
        next_seq = {room_id: locked[room_id].last_seq + 1 for room_id in counts}
        update_by_pk(Room, "last_seq", {r: locked[r].last_seq + n for r, n in counts.items()})
    now = timezone.now()
    messages = []
    for send in accepted:
        seq = next_seq[send.room_id]
        next_seq[send.room_id] = seq + 1
        messages.append(Message(
            room=locked[send.room_id], author=send.author, body=send.body,
            client_id=send.client_id, reply_to_id=send.reply_to, seq=seq, created_at=now,
        ))
    for room_id, after_last in next_seq.items():
        locked[room_id].last_seq = after_last - 1
    fields = ["room_id", "author_id", "body", "client_id", "reply_to_id", "seq", "created_at"]
    rows = [(m.room_id, m.author_id, m.body, m.client_id, m.reply_to_id, m.seq, m.created_at)
            for m in messages]
    if message_ids is None:
        ids = insert_rows(Message, fields, rows, returning="id")
    else:
        ids = message_ids[: len(messages)]
        insert_rows(Message, ["id", *fields], [(pk, *row) for pk, row in zip(ids, rows)])
    for message, pk in zip(messages, ids, strict=True):
        message.pk = pk
        message._state.adding = False
    events = [
        build_event("message.created", room=message.room, seq=message.seq,
                    actor=message.author, data=ev.message_created(message), ts=now)
        for message in messages
    ]
    record_events(events)
    return {send.index: event for send, event in zip(accepted, events)}


def _resent_events(resends: dict, created: dict[int, Event]) -> dict[int, Event]:
    """The original events of resends: sent in this batch, or read from the log."""
    found: dict[int, Event] = {}
    wanted: dict[tuple[int, int], list[int]] = {}
    for index, original in resends.items():
        if isinstance(original, _Send):
            found[index] = created[original.index]
        else:
            wanted.setdefault(original, []).append(index)
    if wanted:
        query = Q()
        for room_id, seq in wanted:
            query |= Q(room_id=room_id, seq=seq)
        for event in Event.objects.filter(query):
            for index in wanted[(event.room_id, event.seq)]:
                found[index] = event
    return found


def message_edit(*, message, actor, body) -> Event:
    """Change one's own message."""
    body = clean_body(body)
    with transaction.atomic():
        room = rooms.lock_room(message.room_id)
        message = Message.objects.get(pk=message.pk)
        rooms.check_can_view(room, actor)
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
    """Delete a message: the author their own, moderators any (recorded in the audit trail)."""
    with transaction.atomic():
        room = rooms.lock_room(message.room_id)
        message = Message.objects.get(pk=message.pk)
        rooms.check_can_view(room, actor)
        if message.is_deleted:
            raise invalid("the message is already deleted")
        rooms.check_not_archived(room)
        by_moderator = message.author_id != actor.pk
        if by_moderator and not rooms.can_moderate(room, actor):
            raise forbidden("only the author or a moderator can delete a message")
        message.deleted_at = timezone.now()
        message.deleted_by = actor
        message.save(update_fields=["deleted_at", "deleted_by"])
        event = record_event(
            type="message.deleted",
            room=room,
            actor=actor,
            data=ev.message_deleted(message, by_moderator=by_moderator),
        )
        if by_moderator:
            ModerationAction.objects.create(
                room=room,
                actor=actor,
                target_user_id=message.author_id,
                target_message_id=message.pk,
                action=ModerationAction.Action.DELETE_MESSAGE,
                reason=(reason or "")[:500],
            )
        return event


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
    """Take one's reaction back."""
    emoji = clean_emoji(emoji)
    with transaction.atomic():
        room = rooms.lock_room(message.room_id)
        rooms.check_can_view(room, user)
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
