"""The outbox publisher against the real broker, in this process (the worker tests cover Celery)."""

from __future__ import annotations

import time

import pytest
from django.test import override_settings
from django.utils import timezone
from prometheus_client import REGISTRY

from apps.events import kafka, publisher
from apps.events.models import Event, Outbox
from apps.events.outbox import outbox_status
from tests import factories
from tests.events.kafka_support import kill_broker, outage_settings, read_topic
from tests.support.services import Broker

pytestmark = [pytest.mark.kafka, pytest.mark.django_db]


def make_traffic(rooms=3, per_room=5):
    owner = factories.make_user()
    made = []
    for _ in range(rooms):
        room = factories.make_room(owner)
        for i in range(per_room):
            factories.send(room, owner, body=f"m{i}")
        made.append(room)
    return made


def published_metric(type_):
    return REGISTRY.get_sample_value("chat_kafka_published_total", {"type": type_}) or 0


@pytest.fixture(autouse=True)
def fresh_producer():
    kafka.reset_producer()
    yield
    kafka.reset_producer()


def test_publish_marks_rows_and_records_are_exactly_the_envelopes():
    make_traffic()
    rows = {str(e.pk): e for e in Event.objects.all()}
    before = published_metric("message.created")
    result = publisher.publish_pending()
    assert published_metric("message.created") - before == 15
    assert result.published == len(rows) and result.failed == 0
    assert not Event.objects.unpublished().exists() and not Outbox.objects.exists()
    assert Event.objects.count() == len(rows)  # the log keeps every row

    records = [r for r in read_topic(want_ids=rows) if r.envelope["id"] in rows]
    assert sorted(r.envelope["id"] for r in records) == sorted(rows)  # each once
    for rec in records:
        row = rows[rec.envelope["id"]]
        assert rec.envelope == row.envelope
        assert rec.key == str(row.room_id).encode()
        assert rec.headers == {"event_type": row.type, "event_id": str(row.pk)}
    # Nothing left: a second drain publishes nothing.
    assert publisher.publish_pending().published == 0


@pytest.mark.services
def test_publishing_deletes_the_outbox_rows_and_leaves_the_log_rows_as_written():
    """The log is append-only: an acknowledgement deletes the event's narrow Outbox row, it
    does not rewrite the event row (its xmin, the transaction that wrote that row version,
    stays the insert's)."""
    from django.db import connection

    make_traffic(rooms=2, per_room=3)

    def versions():
        with connection.cursor() as cursor:
            cursor.execute("SELECT id, xmin::text FROM events_event")
            return dict(cursor.fetchall())

    before = versions()
    assert Outbox.objects.count() == len(before)
    assert publisher.publish_pending().published == len(before)
    assert versions() == before
    assert not Outbox.objects.exists()


def vacuums_of_the_outbox() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT pg_stat_get_vacuum_count('events_outbox'::regclass)")
        return cursor.fetchone()[0]


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_the_publisher_vacuums_the_outbox_after_so_many_deleted_rows():
    make_traffic(rooms=2, per_room=4)  # 2 x (room.created, member.joined) + 8 messages: 12
    before = vacuums_of_the_outbox()
    with override_settings(OUTBOX_VACUUM_EVERY_ROWS=5, OUTBOX_BATCH_SIZE=4):
        publisher.Vacuum.deleted = 0
        assert publisher.publish_pending().published == 12
    # 12 rows in batches of 4: a VACUUM after the 8th row; 4 left over count towards the next.
    assert vacuums_of_the_outbox() == before + 1
    assert publisher.Vacuum.deleted == 4
    with override_settings(OUTBOX_VACUUM_EVERY_ROWS=0):
        make_traffic(rooms=1, per_room=10)
        publisher.publish_pending()
    assert vacuums_of_the_outbox() == before + 1  # 0: never


def test_pending_rows_wait_while_the_room_head_backs_off():
    (room,) = make_traffic(rooms=1, per_room=3)
    head = Event.objects.filter(room=room).order_by("seq").first()
    Outbox.objects.filter(pk=head.pk).update(
        next_attempt_at=timezone.now() + timezone.timedelta(minutes=5), last_error="boom"
    )
    other = factories.make_room()
    result = publisher.publish_pending()
    # The other room goes out; not one row of the held room is published before its head.
    assert Event.objects.filter(room=other).unpublished().count() == 0
    assert Event.objects.filter(room=room).published().count() == 0
    assert result.published == Event.objects.filter(room=other).count()

    Outbox.objects.filter(pk=head.pk).update(next_attempt_at=None)
    publisher.publish_pending()
    assert Event.objects.filter(room=room).unpublished().count() == 0


def test_backoff_is_exponential_and_capped():
    with override_settings(OUTBOX_RETRY_BASE_SECONDS=1.0, OUTBOX_RETRY_MAX_SECONDS=30.0):
        assert [publisher.backoff_seconds(n) for n in (1, 2, 3, 4, 5, 6, 9)] == [
            1,
            2,
            4,
            8,
            16,
            30,
            30,
        ]


def test_broker_down_keeps_rows_with_their_error_then_publishes_them_in_order():
    broker = Broker().start()
    try:
        with outage_settings(broker):
            rooms = make_traffic(rooms=2, per_room=2)
            assert publisher.publish_pending().published == Event.objects.count()
            kill_broker(broker)
            for room in rooms:
                factories.send(room, room.created_by, body="during the outage")
            result = publisher.publish_pending(max_seconds=5)
            assert result.published == 0 and result.errors
            assert Event.objects.unpublished().count() == 2
            failing = Outbox.objects.all()
            assert failing.count() == 2
            # One head per room carries the error and the attempt; nothing is dropped.
            assert failing.exclude(last_error="").count() == 2
            assert all(e.publish_attempts == 1 for e in failing)
            status = outbox_status()
            assert status["pending"] == 2 and status["failing"] == 2
            assert REGISTRY.get_sample_value("chat_outbox_pending") == 2
            assert REGISTRY.get_sample_value("chat_outbox_lag_seconds") > 0

            # A restarted in-memory broker is empty: the publisher re-creates the topic.
            broker = Broker(port=broker.port).start()
            result = publisher.publish_pending()
            assert result.published == 2, result
            outage = [
                str(e.pk) for e in Event.objects.filter(envelope__data__body="during the outage")
            ]
            records = read_topic([broker.bootstrap], want_ids=outage)
            assert sorted(r.envelope["id"] for r in records) == sorted(outage)
            assert {r.key for r in records} == {str(r.id).encode() for r in rooms}
    finally:
        kill_broker(broker)


def test_only_one_publisher_at_a_time_the_other_waits_then_gives_up():
    from django.db import connection

    make_traffic(rooms=1, per_room=2)
    if connection.vendor == "postgresql":
        import psycopg

        db = connection.settings_dict
        holder = psycopg.connect(
            host=db["HOST"] or "127.0.0.1",
            port=db["PORT"] or 5432,
            user=db["USER"] or "postgres",
            dbname=db["NAME"],
            autocommit=True,
        )
        holder.execute("SELECT pg_advisory_lock(%s)", [publisher.PUBLISHER_LOCK_KEY])
        release = holder.close  # the lock dies with the session, as when a worker is killed
    else:
        import fcntl

        handle = open(f"{connection.settings_dict['NAME']}.outbox.lock", "a")
        fcntl.flock(handle, fcntl.LOCK_EX)
        release = handle.close
    try:
        with override_settings(OUTBOX_LOCK_TIMEOUT_SECONDS=0.5):
            result = publisher.publish_pending()
        assert result.locked is False and result.published == 0
        # The sweep's way: no wait at all (the holder drains what there is).
        with override_settings(OUTBOX_LOCK_TIMEOUT_SECONDS=30):
            started = time.monotonic()
            result = publisher.publish_pending(wait_for_lock=False)
            assert time.monotonic() - started < 5
        assert result.locked is False and result.published == 0
        assert Event.objects.unpublished().count() == Event.objects.count()
    finally:
        release()
    assert publisher.publish_pending().published == Event.objects.count()


@pytest.mark.services
def test_a_draining_kick_keeps_its_debounce_key_until_its_last_read():
    """Commits during a long drain queue no new task: the key is renewed until the drainer
    clears it for its last read (then a commit queues the next kick)."""
    from apps.core.redis import sync_client
    from apps.events.outbox import clear_kick, kick_key, renew_kick

    client = sync_client()
    make_traffic(rooms=1, per_room=3)
    ttls, cleared = [], []

    def keep_alive():
        renew_kick()
        ttls.append(client.pttl(kick_key()))

    def before_last_read():
        clear_kick()
        cleared.append(client.exists(kick_key()))

    with override_settings(OUTBOX_KICK_DEBOUNCE_MS=300):
        result = publisher.publish_pending(
            idle_seconds=1.0, before_last_read=before_last_read, keep_alive=keep_alive
        )
    assert result.published == Event.objects.count() and result.last_read
    # Renewed all along the drain (1 s of it idle, longer than the key lives), never after.
    assert len(ttls) >= 4 and all(0 < ttl <= 300 for ttl in ttls)
    assert cleared == [0] and not client.exists(kick_key())


def test_after_a_batch_that_emptied_the_outbox_the_drain_lingers_so_the_next_gathers(
    settings, monkeypatch
):
    """A steady stream goes out in fewer, fuller batches: after a batch that emptied the
    outbox the loop waits OUTBOX_LINGER_SECONDS, and what committed meanwhile is one batch."""
    settings.OUTBOX_LINGER_SECONDS = 0.2
    (room,) = make_traffic(rooms=1, per_room=3)
    owner = room.created_by
    sleeps = []
    real_sleep = time.sleep

    def sleep(seconds):
        sleeps.append(seconds)
        if len(sleeps) == 1:  # the linger after the first batch: five commits arrive meanwhile
            for i in range(5):
                factories.send(room, owner, body=f"during {i}")
        real_sleep(min(seconds, 0.01))

    monkeypatch.setattr(publisher.time, "sleep", sleep)
    result = publisher.publish_pending()
    assert sleeps[0] == pytest.approx(0.2, abs=0.01)
    assert result.published == Event.objects.filter(room=room).count()
    assert result.batches == 2  # the three before, then the five of the linger together
    assert not Event.objects.unpublished().exists()


def test_a_full_batch_is_followed_at_once(settings, monkeypatch):
    settings.OUTBOX_LINGER_SECONDS = 0.2
    settings.OUTBOX_BATCH_SIZE = 4
    make_traffic(rooms=1, per_room=6)
    total = Event.objects.unpublished().count()
    if total % 4 == 0:  # one more row, so the last batch is a partial one
        make_traffic(rooms=1, per_room=0)
        total = Event.objects.unpublished().count()
    assert total > 4 and total % 4
    sleeps = []
    monkeypatch.setattr(publisher.time, "sleep", sleeps.append)
    result = publisher.publish_pending()
    assert result.published == total
    assert result.batches == -(-total // 4)
    # Only the last batch, the one that emptied the outbox, lingers; the full ones do not.
    assert sleeps == [pytest.approx(0.2, abs=0.01)]
