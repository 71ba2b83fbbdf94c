"""The outbox publisher's batch reads and the worker's database connections (issue #7: the
publisher's cost per event at a thousand events a second)."""

from __future__ import annotations

import json
import re
import time

import pytest
from django.db import connection
from django.utils import timezone

from apps.core.redis import sync_client
from apps.events import catalogue as ev
from apps.events import kafka, publisher
from apps.events.models import Event, Outbox
from apps.events.outbox import clear_kick, kick_key
from tests import factories
from tests.events.kafka_support import read_topic, wait_for
from tests.support.processes import CeleryWorker

pytestmark = [pytest.mark.kafka]


@pytest.fixture
def fresh_producer():
    kafka.reset_producer()
    yield
    kafka.reset_producer()


def roomless_event(topic: str) -> Event:
    """A durable event of no room (none of today's types is one; the contract allows them)."""
    now = timezone.now()
    event = Event(type="room.updated", room=None, seq=None, ts=now, envelope={})
    event.envelope = ev.envelope(
        "room.updated",
        room_id=None,
        seq=None,
        actor=None,
        data=ev.room_updated({"topic": topic}),
        ts=now,
        id=event.id,
    )
    event.save(force_insert=True)
    return event


@pytest.mark.django_db
def test_a_backing_off_roomless_head_holds_back_roomless_events_only(fresh_producer):
    first, second = roomless_event("one"), roomless_event("two")
    Outbox.objects.filter(pk=first.pk).update(
        next_attempt_at=timezone.now() + timezone.timedelta(minutes=5), last_error="boom"
    )
    room = factories.make_room()

    publisher.publish_pending()
    assert not Event.objects.filter(room=room).unpublished().exists()
    assert Event.objects.filter(pk__in=[first.pk, second.pk]).unpublished().count() == 2

    Outbox.objects.filter(pk=first.pk).update(next_attempt_at=None)
    result = publisher.publish_pending()
    assert result.published == 2 and not Event.objects.unpublished().exists()
    records = [
        r
        for r in read_topic(want_ids=[first.pk, second.pk])
        if r.envelope["id"] in (str(first.pk), str(second.pk))
    ]
    assert [r.envelope["data"]["topic"] for r in sorted(records, key=lambda r: r.offset)] == [
        "one",
        "two",
    ]
    assert {r.key for r in records} == {kafka.ROOMLESS_KEY}


@pytest.mark.django_db
def test_the_record_value_is_the_stored_envelope_json(fresh_producer):
    room = factories.make_room()
    factories.send(room, room.created_by, body='ünïcode ✓ "quoted"')
    rows = publisher.next_batch(100)
    assert rows and all(
        json.loads(row.value) == Event.objects.get(pk=row.pk).envelope for row in rows
    )
    assert {row.pk for row in rows} == {
        str(pk) for pk in Event.objects.values_list("pk", flat=True)
    }


def start_worker(env) -> CeleryWorker:
    """A worker with one pool process on an empty queue: kicks that earlier tests enqueued with
    no worker running would otherwise run first (and each lingers)."""
    from chatproject.celery import app

    app.control.purge()
    worker = CeleryWorker(env).start()
    worker.wait_ready()
    return worker


WORKER_APP_NAME = "chat-test-publisher-worker"


def worker_backends() -> set[tuple[int, object]]:
    """(pid, backend start) of the worker's sessions (libpq names them from PGAPPNAME)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid, backend_start FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = %s",
            [WORKER_APP_NAME],
        )
        return set(cursor.fetchall())


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_worker_tasks_reuse_the_pooled_database_connections(child_env):
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL connection pool only")
    worker = start_worker({**child_env, "PGAPPNAME": WORKER_APP_NAME})
    try:
        owner = factories.make_user()
        room = factories.make_room(owner)
        clear_kick()
        factories.send(room, owner, body="first")
        wait_for(lambda: not Event.objects.unpublished().exists(), message="the first task")
        wait_for(worker_backends, message="the worker's connections")
        before = worker_backends()
        for n in range(3):  # a task each: the kick key is clear before every send
            clear_kick()
            factories.send(room, owner, body=f"again {n}")
            wait_for(lambda: not Event.objects.unpublished().exists(), message="a later task")
        # The same sessions served every task: no new connection per task.
        assert worker_backends() == before
    finally:
        worker.stop()
        clear_kick()


def publisher_tasks(worker) -> int:
    """Kick tasks the worker has received so far (one INFO line each)."""
    return len(re.findall(r"publish_outbox\[[^\]]+\] received", worker.output()))


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_a_steady_stream_of_commits_is_published_by_a_few_tasks(child_env):
    worker = start_worker(child_env)
    try:
        owner = factories.make_user()
        room = factories.make_room(owner)
        wait_for(lambda: not Event.objects.unpublished().exists(), message="the room's events")
        # That task lingers, then clears the key and reads once more: let it end.
        wait_for(lambda: not sync_client().exists(kick_key()), message="the task to end")
        time.sleep(0.5)
        before = publisher_tasks(worker)
        for n in range(20):  # ~25 commits a second, each one kicking
            factories.send(room, owner, body=f"stream {n}")
            time.sleep(0.03)
        wait_for(lambda: not Event.objects.unpublished().exists(), message="the stream")
        tasks = publisher_tasks(worker) - before
        # One task drains while the commits go on (a new one at most per debounce period),
        # where each commit used to start its own.
        assert 1 <= tasks <= 5, tasks
    finally:
        worker.stop()
        clear_kick()
