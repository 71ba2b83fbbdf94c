"""Every write to messages and reactions: one function, one transaction, its permission check.

Each service locks the room row first, so a room's writes are serialized and its seq follows
commit order. Each returns the committed Event (its `envelope` is what `ack` carries).
"""

from __future__ import annotations

import json
import uuid
from contextlib import contextmanager
from typing import NamedTuple

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone
from emoji import EMOJI_DATA

from apps.events import catalogue as ev
from apps.events.models import Event
from apps.events.services import (build_event, events_statement, fanout_items, record_event,
                                  record_events, redact_message_events, redaction_statement,
                                  send_events_after_commit, send_events_on_commit)
from apps.notifications.models import Notification
from apps.rooms import services as rooms
from apps.rooms.models import Membership, ModerationAction, Room
from apps.users.models import Block
from chatproject.bulk import (Statement, arun, combine, insert_rows, pg_insert, pg_update, run,
                              update_by_pk)
from chatproject.errors import ServiceError, forbidden, invalid, not_found
from chatproject.text import check_text

from .models import Message, Reaction

EMOJI_MAX = 32


def clean_body(body) -> str:
    """Non-empty, at most CHAT_MESSAGE_MAX_LENGTH characters, no control characters, something
    visible in it, bidirectional controls balanced (chatproject.text)."""
    if not isinstance(body, str):
        raise invalid("body must be a string")
    if len(body) > settings.CHAT_MESSAGE_MAX_LENGTH:
        raise ServiceError(
            "too_large", f"body is longer than {settings.CHAT_MESSAGE_MAX_LENGTH} characters"
        )
    check_text(body, "body", multiline=True)
    return body


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
    rooms.check_can_read(message.room, user, missing="message not found")
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
    the seqs follow the locked rooms' last_seq, and the messages and events go in with one
    INSERT each. On PostgreSQL the statements are pipelined: the reads (and BEGIN) share one
    round trip, the writes and the COMMIT another. A resend, in an earlier batch or this one,
    answers with the original event; one that races a concurrent transaction hits the
    (author, client_id) constraint and the batch is retried one send at a time.
    """
    requests = list(requests)
    results, todo = _clean(requests)
    if not todo:
        return results
    try:
        with _pipeline(), transaction.atomic():
            reads = _read(todo)
            accepted, resends, stamps = _decide(todo, reads, results)
            created = _create(accepted, reads, stamps) if accepted else {}
            _answer(accepted, resends, created, _logged_events(_wanted(resends)), results)
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


async def amessage_send_many(conn, requests) -> list[Event | ServiceError]:
    """message_send_many on an asyncio psycopg connection (PostgreSQL; see
    apps.messaging.sendqueue): the same statements and rules, run on the event loop, so a
    batch never waits for a database thread to get the GIL back after each round trip.
    A resend race, or any database error, is left to the caller (it falls back to the
    thread pool)."""
    results, todo = _clean(list(requests))
    if not todo:
        return results
    async with conn.pipeline(), conn.transaction():
        reads = _reads_from_rows(await arun(conn, _read_statements(_keys(todo), len(todo))))
        accepted, resends, stamps = _decide(todo, reads, results)
        created, statements = _plan(accepted, reads, stamps) if accepted else ({}, [])
        await arun(conn, statements)
        wanted = _wanted(resends)
        logged = {}
        if wanted:
            rows = (await arun(conn, [_events_statement(wanted)]))[0]
            logged = _events_from_rows(rows)
        _answer(accepted, resends, created, logged, results)
    # Committed: the fan-out and the publisher's kick, as on_commit does for the sync path.
    if created:
        send_events_after_commit(fanout_items(created.values()))
    return results


def _clean(requests) -> tuple[list, list[_Send]]:
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
    return results, todo


@contextmanager
def _pipeline():
    """PostgreSQL: psycopg's pipeline mode for the batch, so its statements share round trips.
    Errors come out as Django's database errors, as from the ORM."""
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


class _Keys(NamedTuple):
    room_ids: list
    author_ids: list
    client_ids: list
    reply_ids: list


class _Reads(NamedTuple):
    rooms: dict  # locked rooms by id
    memberships: dict  # (room id, user id) -> membership with its user
    earlier: dict  # (author id, client id) -> (room id, seq) of a message sent before
    reply_rooms: dict  # reply_to message id -> its room id (None: deleted)
    message_ids: list | None  # ids drawn for the new messages (PostgreSQL)
    blocked: set  # (direct room id, author id) where the room's other member blocked the author


class _Stamps(NamedTuple):
    """Slow mode: the memberships whose last_posted_at the batch sets to `now`."""

    now: object
    membership_ids: list


def _keys(todo: list[_Send]) -> _Keys:
    return _Keys(
        sorted({send.room_id for send in todo}),
        sorted({send.author.pk for send in todo}),
        list({send.client_id for send in todo}),
        sorted({s.reply_to for s in todo if type(s.reply_to) is int and 0 < s.reply_to < 2**63}),
    )


def _read(todo: list[_Send]) -> _Reads:
    keys = _keys(todo)
    if connection.vendor == "postgresql":
        return _reads_from_rows(run(_read_statements(keys, len(todo))))
    locked = {
        room.pk: room
        for room in Room.objects.select_for_update().filter(pk__in=keys.room_ids).order_by("pk")
    }
    earlier = {
        (author_id, client_id): (room_id, seq)
        for author_id, client_id, room_id, seq in Message.objects.filter(
            author_id__in=keys.author_ids, client_id__in=keys.client_ids
        ).values_list("author_id", "client_id", "room_id", "seq")
    }
    reply_rooms = (
        {pk: None if deleted_at else room_id for pk, room_id, deleted_at in
         Message.objects.filter(pk__in=keys.reply_ids).values_list("id", "room_id", "deleted_at")}
        if keys.reply_ids else {}
    )
    return _Reads(locked, rooms.post_memberships(locked, keys.author_ids), earlier,
                  reply_rooms, None, rooms.blocked_senders(locked.values(), set(keys.author_ids)))


def _user_model():
    return Membership._meta.get_field("user").related_model


def _read_statements(keys: _Keys, count: int) -> list[Statement]:
    """PostgreSQL: lock the rooms (in id order), read the memberships with their users, the
    earlier sends, the blocks that close direct rooms to their authors and the reply
    targets, and draw `count` message ids from the sequence (all in one round trip)."""
    user = _user_model()
    messages = Message._meta.db_table
    blocks = Block._meta.db_table
    return [
        Statement(f"SELECT {_columns(Room)} FROM {Room._meta.db_table} WHERE id = ANY(%b) "
                  "ORDER BY id FOR UPDATE", [keys.room_ids], True),
        Statement(f"SELECT {_columns(Membership, 'm')}, {_columns(user, 'u')} "
                  f"FROM {Membership._meta.db_table} m JOIN {user._meta.db_table} u "
                  "ON u.id = m.user_id WHERE m.room_id = ANY(%b) AND m.user_id = ANY(%b)",
                  [keys.room_ids, keys.author_ids], True),
        Statement(f"SELECT author_id, client_id, room_id, seq FROM {messages} "
                  "WHERE author_id = ANY(%b) AND client_id = ANY(%b)",
                  [keys.author_ids, keys.client_ids], True),
        Statement(f"SELECT nextval(pg_get_serial_sequence(%b, 'id')) "
                  "FROM generate_series(1, %b)", [messages, count], True),
        # A direct room's key is "<low id>:<high id>" of its two members.
        Statement(f"SELECT r.id, b.blocked_id FROM {Room._meta.db_table} r JOIN {blocks} b "
                  "ON r.direct_key = LEAST(b.blocker_id, b.blocked_id)::text || ':' || "
                  "GREATEST(b.blocker_id, b.blocked_id)::text "
                  "WHERE r.id = ANY(%b) AND r.kind = 'direct' AND b.blocked_id = ANY(%b)",
                  [keys.room_ids, keys.author_ids], True),
    ] + ([Statement(f"SELECT id, CASE WHEN deleted_at IS NULL THEN room_id END FROM {messages} "
                    "WHERE id = ANY(%b)", [keys.reply_ids], True)] if keys.reply_ids else [])


def _reads_from_rows(rows) -> _Reads:
    user = _user_model()
    db = connection.alias
    locked = {r[0]: Room.from_db(db, None, r) for r in rows[0]}
    split = len(Membership._meta.concrete_fields)
    memberships = {}
    for row in rows[1]:
        membership = Membership.from_db(db, None, row[:split])
        membership.user = user.from_db(db, None, row[split:])
        memberships[(membership.room_id, membership.user_id)] = membership
    earlier = {(a, c): (r, s) for a, c, r, s in rows[2]}
    replies = dict(rows[5]) if len(rows) > 5 else {}
    return _Reads(locked, memberships, earlier, replies, [row[0] for row in rows[3]],
                  {tuple(row) for row in rows[4]})


def _columns(model, alias=None) -> str:
    """Every concrete column of the model, in field order (what from_db expects)."""
    prefix = f"{alias}." if alias else ""
    return ", ".join(f'{prefix}"{f.column}"' for f in model._meta.concrete_fields)


def _decide(todo: list[_Send], reads: _Reads, results: list):
    """Check each send under the locks: (accepted sends, {index: what a resend answers},
    the slow-mode stamps). A member's send in a slow room stamps their membership here, so
    a second send of theirs later in the same batch is refused like one in the next batch."""
    accepted: list[_Send] = []
    first_send: dict[tuple, _Send] = {}
    resends: dict[int, tuple[int, int] | _Send] = {}
    stamps = _Stamps(timezone.now(), [])
    for send in todo:
        key = (send.author.pk, send.client_id)
        if key in reads.earlier or key in first_send:
            resends[send.index] = reads.earlier.get(key) or first_send[key]
            continue
        room = reads.rooms.get(send.room_id)
        try:
            if room is None:
                raise not_found("room not found")
            membership = reads.memberships.get((room.pk, send.author.pk))
            rooms.check_can_send(room, send.author, membership, now=stamps.now,
                                 blocked=(room.pk, send.author.pk) in reads.blocked)
            if send.reply_to is not None:
                if isinstance(send.reply_to, bool) or not isinstance(send.reply_to, int):
                    raise invalid("reply_to must be a message id")
                target_room = reads.reply_rooms.get(send.reply_to, 0)
                if target_room is None:
                    raise not_found("reply_to: the message was deleted")
                if target_room != room.pk:
                    raise invalid("reply_to is not a message of this room")
        except ServiceError as exc:
            results[send.index] = exc
            continue
        if rooms.stamps_posts(room, send.author, membership):
            membership.last_posted_at = stamps.now
            stamps.membership_ids.append(membership.pk)
        first_send[key] = send
        accepted.append(send)
    return accepted, resends, stamps


MESSAGE_FIELDS = ["room_id", "author_id", "body", "client_id", "reply_to_id", "seq", "created_at"]


def _new_messages(accepted: list[_Send], locked: dict) -> tuple[list[Message], dict[int, int]]:
    """The accepted sends' messages with their seqs (after each locked room's last_seq), and
    each room's new last_seq."""
    now = timezone.now()
    last = {}
    messages = []
    for send in accepted:
        room = locked[send.room_id]
        seq = last.get(room.pk, room.last_seq) + 1
        last[room.pk] = seq
        messages.append(Message(
            room=room, author=send.author, body=send.body, client_id=send.client_id,
            reply_to_id=send.reply_to, seq=seq, created_at=now,
        ))
    for room_id, seq in last.items():
        locked[room_id].last_seq = seq
    return messages, last


def _created_events(accepted, messages, ids) -> dict[int, Event]:
    for message, pk in zip(messages, ids, strict=True):
        message.pk = pk
        message._state.adding = False
    events = [
        build_event("message.created", room=message.room, seq=message.seq,
                    actor=message.author, data=ev.message_created(message),
                    ts=message.created_at)
        for message in messages
    ]
    return {send.index: event for send, event in zip(accepted, events)}


def _create(accepted: list[_Send], reads: _Reads, stamps: _Stamps) -> dict[int, Event]:
    """Insert the accepted sends' messages and events; {request index: event}."""
    if reads.message_ids is not None:  # PostgreSQL: nothing here waits for an answer
        created, statements = _plan(accepted, reads, stamps)
        run(statements)
        send_events_on_commit(fanout_items(created.values()))
        return created
    messages, last = _new_messages(accepted, reads.rooms)
    update_by_pk(Room, "last_seq", last)
    ids = insert_rows(Message, MESSAGE_FIELDS, [_message_row(m) for m in messages],
                      returning="id")
    created = _created_events(accepted, messages, ids)
    record_events(list(created.values()))
    if stamps.membership_ids:
        Membership.objects.filter(pk__in=stamps.membership_ids).update(last_posted_at=stamps.now)
    return created


def _message_row(message) -> tuple:
    return tuple(getattr(message, field) for field in MESSAGE_FIELDS)


def _plan(accepted: list[_Send], reads: _Reads,
          stamps: _Stamps) -> tuple[dict[int, Event], list[Statement]]:
    """PostgreSQL: the events of the accepted sends and the statements that write them (the
    message ids were drawn with the reads, so events are built before anything is written)."""
    messages, last = _new_messages(accepted, reads.rooms)
    ids = reads.message_ids[: len(messages)]
    created = _created_events(accepted, messages, ids)
    writes = [
        pg_update(Room, "last_seq", last),
        pg_insert(Message, ["id", *MESSAGE_FIELDS],
                  [(pk, *_message_row(m)) for pk, m in zip(ids, messages)]),
        events_statement(list(created.values())),
    ]
    if stamps.membership_ids:  # slow-mode rooms only: no extra write for the others
        writes.insert(0, Statement(
            f"UPDATE {Membership._meta.db_table} SET last_posted_at = %b WHERE id = ANY(%b)",
            [stamps.now, stamps.membership_ids]))
    return created, [combine(writes)]


def _wanted(resends: dict) -> dict[tuple[int, int], list[int]]:
    """(room id, seq) of the logged events that resends answer with -> request indexes."""
    wanted: dict[tuple[int, int], list[int]] = {}
    for index, original in resends.items():
        if not isinstance(original, _Send):
            wanted.setdefault(original, []).append(index)
    return wanted


def _logged_events(wanted) -> dict[tuple[int, int], Event]:
    if not wanted:
        return {}
    query = Q()
    for room_id, seq in wanted:
        query |= Q(room_id=room_id, seq=seq)
    return {(e.room_id, e.seq): e for e in Event.objects.filter(query)}


def _events_statement(wanted) -> Statement:
    pairs = list(wanted)
    return Statement(
        f"SELECT {_columns(Event, 'e')} FROM {Event._meta.db_table} e JOIN "
        "unnest(%b::bigint[], %b::bigint[]) AS w(room_id, seq) "
        "ON e.room_id = w.room_id AND e.seq = w.seq",
        [[room for room, _ in pairs], [seq for _, seq in pairs]], True,
    )


def _events_from_rows(rows) -> dict[tuple[int, int], Event]:
    events = [Event.from_db(connection.alias, None, row) for row in rows]
    for event in events:  # from_db does not run the JSON field's converter
        if isinstance(event.envelope, (str, bytes)):
            event.envelope = json.loads(event.envelope)
    return {(e.room_id, e.seq): e for e in events}


def _answer(accepted, resends, created, logged, results) -> None:
    """Fill in the results: each accepted send's event, each resend's original (sent in this
    batch, or `logged`: read from the log by (room id, seq))."""
    for send in accepted:
        results[send.index] = created[send.index]
    for index, original in resends.items():
        if isinstance(original, _Send):
            results[index] = created[original.index]
        else:
            results[index] = logged[original]


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
    carried its content is rewritten to the redacted form (PROTOCOL §6)."""
    reason = (reason or "").strip()[:500]
    with transaction.atomic():
        room = rooms.lock_room(message.room_id)
        message = Message.objects.get(pk=message.pk)
        rooms.check_can_read(room, actor)
        if message.is_deleted:
            raise invalid("the message is already deleted")
        rooms.check_not_archived(room)
        by_moderator = message.author_id != actor.pk
        if by_moderator and not rooms.can_moderate(room, actor):
            raise forbidden("only the author or a moderator can delete a message")
        event = messages_redact(room=room, message_ids=[message.pk], actor=actor,
                                by_moderator=by_moderator, reason=reason)[0]
        message.body, message.deleted_at = "", event.ts
        if by_moderator:
            ModerationAction.objects.create(
                room=room,
                actor=actor,
                target_user_id=message.author_id,
                target_message_id=message.pk,
                action=ModerationAction.Action.DELETE_MESSAGE,
                reason=reason,
            )
        return event


def messages_redact(*, room, message_ids, actor, by_moderator, reason) -> list[Event]:
    """Delete and redact messages of one room: one message.deleted each, the rows' bodies
    cleared and their content events redacted, in one statement on PostgreSQL whatever their
    number.

    Holds the room row lock (the caller's lock_room read `room.last_seq` under it): the new
    events' seqs follow it. The @mention notifications quote the text, so they go too (the
    Kafka consumer also drops them on message.deleted; this makes it so from the commit on)."""
    ids = list(message_ids)
    now = timezone.now()
    deleted_by = actor.pk if actor is not None else None
    first = room.last_seq + 1
    room.last_seq = first + len(ids) - 1
    events = [
        build_event("message.deleted", room=room, seq=first + offset, actor=actor, ts=now,
                    data=ev.message_deleted(pk, by_moderator=by_moderator, reason=reason))
        for offset, pk in enumerate(ids)
    ]
    if connection.vendor == "postgresql":  # every write in one statement: one round trip
        run([combine([
            pg_update(Room, "last_seq", {room.pk: room.last_seq}),
            Statement(f"UPDATE {Message._meta.db_table} SET body = '', deleted_at = %b, "
                      "deleted_by_id = %b::bigint WHERE id = ANY(%b::bigint[])",
                      [now, deleted_by, ids]),
            redaction_statement(ids),
            Statement(f"DELETE FROM {Notification._meta.db_table} "
                      "WHERE message_id = ANY(%b::bigint[])", [ids]),
            events_statement(events),
        ])])
        send_events_on_commit(fanout_items(events))
        return events
    Message.objects.filter(pk__in=ids).update(body="", deleted_at=now, deleted_by_id=deleted_by)
    redact_message_events(ids)
    Notification.objects.filter(message_id__in=ids).delete()
    update_by_pk(Room, "last_seq", {room.pk: room.last_seq})
    record_events(events)
    return events


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
