"""Writing events: the room log / outbox row inside the transaction, side effects after commit."""

from __future__ import annotations

import json
import logging

from django.db import connection, transaction
from django.utils import timezone

from apps.core.instances import InstanceBuilder
from apps.core.sql import Json, Statement, insert_rows, pg_insert, run, update_by_pk

from . import catalogue, fanout, seqs
from .catalogue import CATALOGUE
from .models import Event
from .signals import events_committed
from .tasks import kick_publisher_soon

logger = logging.getLogger(__name__)


def record_event(*, type: str, room=None, actor=None, data: dict, target_user_ids=()) -> Event:
    """Persist one durable event in the current transaction and fan it out after commit.

    Holds the room row lock: seq allocation is serialized per room, so seq has no gaps and
    follows commit order. Callers lock the room first (apps.rooms.services.lock_room) when
    they read state the event depends on.
    """
    spec = _durable(type)
    _check_atomic()
    seq = None
    if spec.seq:
        seq = allocate_seqs({room.pk: 1})[room.pk]
        room.last_seq = seq
    event = build_event(type, room=room, seq=seq, actor=actor, data=data, ts=timezone.now())
    event.save(force_insert=True)
    send_events_on_commit([(event.envelope, target_user_ids, None)])
    return event


# Event(**kwargs), without Model.__init__'s cost (apps.core.instances): the send path builds one
# per message.
_new_event = InstanceBuilder(Event)


def build_event(type: str, *, room, seq, actor, data: dict, ts) -> Event:
    """An unsaved Event with its envelope (for record_events)."""
    event = _new_event(
        type=type,
        room=room,
        seq=seq,
        actor=actor,
        ts=ts,
        message_id=catalogue.message_id_of(type, data),
        subject_id=catalogue.subject_of(data),
    )
    event.envelope = catalogue.envelope(
        type,
        room_id=room.pk if room is not None else None,
        seq=seq,
        actor=actor,
        data=data,
        ts=ts,
        id=event.id,
    )
    return event


def record_events(events: list[Event]) -> None:
    """Persist many events built with build_event in one statement, and fan them out (in this
    order) after commit. Their seqs come from the callers, under their room locks.

    Each envelope is serialized once: `event.envelope_text` is the row's JSON, the fan-out's
    text and what an ack carries."""
    _check_atomic()
    insert_rows(Event, EVENT_FIELDS, _event_rows(events))
    send_events_on_commit(fanout_items(events))


def fanout_items(events) -> list[tuple]:
    """What send_events_on_commit takes for recorded events."""
    return [(e.envelope, (), e.envelope_text) for e in events]


EVENT_FIELDS = [
    "id",
    "type",
    "room_id",
    "seq",
    "actor_id",
    "ts",
    "envelope",
    "message_id",
    "subject_id",
]


def _event_rows(events: list[Event]) -> list[tuple]:
    rows = []
    for event in events:
        _durable(event.type)
        event.envelope_text = fanout.serialize(event.envelope)
        event._state.adding = False
        rows.append(
            (
                event.id,
                event.type,
                event.room_id,
                event.seq,
                event.actor_id,
                event.ts,
                Json(event.envelope_text),
                event.message_id,
                event.subject_id,
            )
        )
    return rows


def events_statement(events: list[Event]):
    """record_events' INSERT as a PostgreSQL statement (for a pipeline); the caller fans the
    events out once committed (send_events_on_commit)."""
    return pg_insert(Event, EVENT_FIELDS, _event_rows(events))


def redact_message_events(message_ids) -> None:
    """Rewrite every stored event that carries these messages' content to the redacted form
    (catalogue.REDACTED) in one UPDATE through the event_message index.

    Run in the deleting transaction: the outbox reads the envelope when it publishes, so a row
    not yet on Kafka goes out redacted."""
    _check_atomic()
    ids = list(message_ids)
    if not ids:
        return
    if connection.vendor == "postgresql":
        run([redaction_statement(ids)])
        return
    marks = ", ".join(["%s"] * len(ids))
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {connection.ops.quote_name(Event._meta.db_table)} SET envelope = "
            "json_set(envelope, '$.data.body', json('null'), '$.data.attachments', json('[]'), "
            f"'$.data.redacted', json('true')) WHERE message_id IN ({marks}) "
            "AND type IN (%s, %s)",
            [*ids, *catalogue.CONTENT_TYPES],
        )


def redaction_statement(message_ids: list[int], rename=None) -> Statement:
    """PostgreSQL: redact_message_events' UPDATE as a statement (to combine with the other
    writes of a deletion into one round trip). `rename` (user id, username): also write that
    name as the `actor` of the rows that user caused (an erasure: each row is rewritten once,
    not once here and again by rename_actor)."""
    redacted = "jsonb_set(envelope, '{data}', (envelope -> 'data') || %b::jsonb)"
    params = [json.dumps(catalogue.REDACTED)]
    if rename is not None:
        redacted = (
            "CASE WHEN actor_id = %b::bigint THEN jsonb_set("
            + redacted
            + ", '{actor,username}', to_jsonb(%b::text)) ELSE "
            + redacted
            + " END"
        )
        params = [rename[0], *params, rename[1], *params]
    return Statement(
        f"UPDATE {connection.ops.quote_name(Event._meta.db_table)} SET envelope = {redacted} "
        "WHERE message_id = ANY(%b::bigint[]) AND type = ANY(%b::text[])",
        [*params, list(message_ids), list(catalogue.CONTENT_TYPES)],
    )


def actor_event_ids(user_id: int) -> list:
    """Ids of the events the user caused (their `actor`), through the actor index."""
    return list(Event.objects.filter(actor_id=user_id).order_by().values_list("id", flat=True))


def rename_actor(*, user_id: int, username: str, event_ids) -> int:
    """Write `username` as the `actor` name of those events (the user's), skipping the ones
    that already carry it; the number of rows changed."""
    ids = list(event_ids)
    if not ids:
        return 0
    if connection.vendor == "postgresql":
        where, params = "id = ANY(%s)", [ids]
    else:
        where, params = f"id IN ({', '.join(['%s'] * len(ids))})", [i.hex for i in ids]
    return _rename("actor", username, f"{where} AND actor_id = %s", [*params, user_id])


def rename_subject(*, user_id: int, username: str) -> int:
    """Write `username` as the name in every `data.user` object naming the user (member and
    receipt events, through the event_subject index); the number of rows changed."""
    return _rename("data.user", username, "subject_id = %s", [user_id])


def _rename(path: str, username: str, where: str, params: list) -> int:
    _check_atomic()
    table = connection.ops.quote_name(Event._meta.db_table)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            pg_path = "{" + path.replace(".", ",") + ",username}"
            cursor.execute(
                f"UPDATE {table} SET envelope = jsonb_set(envelope, %s::text[], "
                f"to_jsonb(%s::text)) WHERE {where} "
                "AND envelope #>> %s::text[] IS DISTINCT FROM %s",
                [pg_path, username, *params, pg_path, username],
            )
        else:
            cursor.execute(
                f"UPDATE {table} SET envelope = json_set(envelope, %s, %s) WHERE {where} "
                "AND json_extract(envelope, %s) IS NOT %s",
                [f"$.{path}.username", username, *params, f"$.{path}.username", username],
            )
        return cursor.rowcount


def _check_atomic():
    if not connection.in_atomic_block:
        raise RuntimeError("events are recorded inside transaction.atomic()")


def _durable(type: str):
    spec = CATALOGUE[type]
    if not spec.persisted:
        raise ValueError(f"{type} is ephemeral; use emit_ephemeral")
    return spec


def _room_model():
    """The Room model, taken from the event's foreign key: events is the bottom of the domain
    and imports no app above it."""
    return Event._meta.get_field("room").related_model


def allocate_seqs(counts: dict[int, int]) -> dict[int, int]:
    """Hand out `n` consecutive seqs in each room, in one statement that takes (or keeps) the
    room rows' locks: {room id: n} -> {room id: the first of its n seqs} (apps.events.seqs)."""
    Room = _room_model()
    rows = update_by_pk(Room, "last_seq", counts, add=True, returning="last_seq")
    if len(rows) != len(counts):
        missing = sorted(set(counts) - {row[0] for row in rows})
        raise Room.DoesNotExist(f"room {missing[0]} does not exist")
    return seqs.first_seqs(counts, dict(rows))


def after_commit(effect) -> None:
    """The one after-commit helper: run `effect()` once the current transaction commits (on
    Django's connection, in this thread), or now when no transaction is open (what ran before
    is committed: autocommit, or a transaction of the send path's asyncio connection that has
    just committed). Nothing runs for a transaction that rolls back; an effect that raises is
    logged and does not fail the caller (the durable record is committed already)."""
    if connection.in_atomic_block:
        transaction.on_commit(effect, robust=True)
        return
    try:
        effect()
    except Exception:
        logger.exception("after-commit effect %r failed", effect)


def dispatch_events(items) -> None:
    """Fan the events out to sockets (in order) and wake the Kafka publisher: the effect that
    send_events_on_commit runs after commit. `items` are (envelope, target user ids, its JSON
    text or None); a failure here loses nothing: the rows are committed, sockets fill gaps from
    the log and the outbox sweep publishes them."""
    try:
        fanout.dispatch_many(items)
    except Exception:  # Redis down: sockets recover from the event log
        logger.warning("fan-out failed for %d events", len(items), exc_info=True)
    if any(CATALOGUE[item[0]["type"]].kafka for item in items):
        kick_publisher_soon()
    if events_committed.receivers:
        events_committed.send_robust(sender=Event, items=items)


def send_events_on_commit(items) -> None:
    """dispatch_events(items) after commit (after_commit): every path that records events
    calls this, the asyncio send path too, once its own transaction committed."""
    after_commit(lambda: dispatch_events(items))
