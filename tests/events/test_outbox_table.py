"""The outbox's own table (apps.events.models.Outbox) and the triggers that keep it in step
with the log (apps.events.triggers, migration 0009). Runs on both databases (bin/test runs it
again with CHAT_EMBEDDED=1)."""

import uuid

import pytest
from django.db import connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from apps.core.sql import insert_rows
from apps.events import catalogue as ev
from apps.events import triggers
from apps.events.apps import _outbox_triggers_after_migrate
from apps.events.catalogue import DURABLE_TYPES
from apps.events.models import Event, Outbox
from apps.events.services import build_event, record_event, record_events
from apps.rooms.models import Room
from tests import factories

pytestmark = pytest.mark.django_db


def pending() -> dict:
    return {o.event_id: (o.room_id, o.seq, o.ts, o.publish_attempts) for o in Outbox.objects.all()}


def as_pending(events) -> dict:
    return {e.pk: (e.room_id, e.seq, e.ts, 0) for e in events}


def test_every_write_path_puts_the_new_event_in_the_outbox_with_its_order(user):
    room = factories.make_room(user)  # record_event (room.created, member.joined)
    factories.send(room, user, "one")  # the send path's one statement
    with transaction.atomic():
        locked = Room.objects.select_for_update().get(pk=room.pk)
        record_event(
            type="room.updated", room=locked, actor=user, data=ev.room_updated({"topic": "t"})
        )
        seq = locked.last_seq + 1
        built = build_event(
            "room.updated",
            room=locked,
            seq=seq,
            actor=user,
            data=ev.room_updated({"topic": "u"}),
            ts=timezone.now(),
        )
        record_events([built])
        Room.objects.filter(pk=room.pk).update(last_seq=seq)
    raw = uuid.uuid4()
    insert_rows(
        Event, ["id", "type", "ts", "envelope"], [(raw, DURABLE_TYPES[0], timezone.now(), {})]
    )

    events = list(Event.objects.all())
    assert len(events) == 6
    assert pending() == as_pending(events)
    assert set(Event.objects.unpublished()) == set(events) and not Event.objects.published()


def test_a_rolled_back_insert_leaves_no_outbox_row(room):
    before = pending()
    with pytest.raises(RuntimeError), transaction.atomic():
        factories.send(room, room.created_by, "never")
        raise RuntimeError
    assert pending() == before


def test_deleting_events_deletes_their_outbox_rows_only(room, user):
    kept = factories.send(room, user, "kept")
    gone = [factories.send(room, user, f"gone {i}") for i in range(3)]
    Event.objects.filter(pk__in=[e.pk for e in gone]).delete()
    assert kept.pk in pending() and not set(pending()) & {e.pk for e in gone}
    # A published event (no outbox row) deletes too, and takes nothing else with it.
    Event.objects.filter(pk=kept.pk).mark_published()
    left = pending()
    Event.objects.filter(pk=kept.pk).delete()
    assert pending() == left


def test_mark_published_takes_events_out_and_mark_unpublished_puts_them_back(room, user):
    sent = factories.send(room, user, "x")
    assert Event.objects.filter(pk=sent.pk).mark_published() == 1
    assert list(Event.objects.published().filter(pk=sent.pk)) == [sent]
    assert not Event.objects.unpublished().filter(pk=sent.pk).exists()
    factories.mark_unpublished([sent])
    assert pending()[sent.pk] == (sent.room_id, sent.seq, sent.ts, 0)


def test_post_migrate_puts_back_triggers_a_table_rebuild_dropped():
    triggers.uninstall(connection)
    assert triggers.installed(connection) == set()
    _outbox_triggers_after_migrate(using="default")
    assert triggers.installed(connection) == set(triggers.TRIGGERS)
    _outbox_triggers_after_migrate(using="default")  # again: nothing changes, nothing fails
    assert triggers.installed(connection) == set(triggers.TRIGGERS)


@pytest.mark.django_db(transaction=True)
def test_the_migration_moves_the_pending_rows_out_and_back(user):
    """0009 on a log with published and pending rows (as 0008 kept them), and back."""
    room = factories.make_room(user)
    head = [factories.send(room, user, f"m{i}") for i in range(4)]
    Event.objects.mark_published()
    factories.mark_unpublished(head[3:])  # still pending when 0009 is reversed
    executor = MigrationExecutor(connection)
    try:
        executor.migrate([("events", "0008_backfill_message_subject")])
        later = timezone.now() + timezone.timedelta(minutes=5)
        with connection.cursor() as cursor:
            # Backwards: an event with no outbox row counts as published, one with a row not.
            cursor.execute("SELECT id FROM events_event WHERE published_at IS NULL")
            assert [uuid.UUID(str(pk)) for (pk,) in cursor.fetchall()] == [head[3].pk]
            cursor.execute(
                "UPDATE events_event SET published_at = NULL, publish_attempts = 2, "
                "last_error = 'boom', next_attempt_at = %s WHERE id IN (%s, %s)",
                [later, *(Event._meta.pk.get_db_prep_value(e.pk, connection) for e in head[2:])],
            )
        executor = MigrationExecutor(connection)
        executor.migrate([("events", "0009_outbox_table")])
    finally:
        MigrationExecutor(connection).migrate(
            MigrationExecutor(connection).loader.graph.leaf_nodes()
        )
    rows = {o.event_id: o for o in Outbox.objects.all()}
    assert set(rows) == {e.pk for e in head[2:]}
    for event in head[2:]:
        row = rows[event.pk]
        assert (row.room_id, row.seq, row.ts) == (event.room_id, event.seq, event.ts)
        assert (row.publish_attempts, row.last_error, row.next_attempt_at) == (2, "boom", later)
    assert triggers.installed(connection) == set(triggers.TRIGGERS)
    factories.send(room, user, "after")  # the triggers work again
    assert Outbox.objects.count() == 3
