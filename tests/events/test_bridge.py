"""The Kafka bridge end to end: services commit, a real Celery worker publishes, Kafka holds it."""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime

import pytest
from django.conf import settings
from django.db import connection, transaction
from django.test import override_settings
from django.utils import timezone as dj_timezone

from apps.core.redis import sync_client
from apps.events import catalogue as ev
from apps.events.models import Event, Outbox
from apps.events.outbox import clear_kick, kick_key
from apps.events.schemas import SCHEMAS
from apps.events.tasks import kick_publisher
from apps.rooms.models import Room
from tests import factories
from tests.events.kafka_support import assert_per_room_order, kill_broker, read_topic, wait_for
from tests.support.processes import CeleryWorker
from tests.support.services import Broker

pytestmark = [pytest.mark.kafka, pytest.mark.services, pytest.mark.django_db(transaction=True)]


def all_published():
    return not Event.objects.unpublished().exists()


def start_worker(env, **kwargs) -> CeleryWorker:
    worker = CeleryWorker(env, **kwargs).start()
    worker.wait_ready()
    return worker


def send_burst(rooms, author, per_room: int, threads: int = 4) -> None:
    """Concurrent sends into every room, from several threads (own DB connections)."""
    errors = []

    def run(part):
        try:
            for i in range(per_room):
                for room in rooms[part::threads]:
                    factories.send(room, author, body=f"burst {i}")
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert not errors, errors


def test_burst_reaches_kafka_once_per_event_keyed_by_room_in_seq_order(celery_worker):
    import jsonschema

    owner = factories.make_user()
    rooms = [factories.make_room(owner) for _ in range(6)]
    send_burst(rooms, owner, per_room=15)
    rows = {str(e.pk): e for e in Event.objects.all()}
    assert Event.objects.filter(type="message.created").count() == 6 * 15
    wait_for(all_published, timeout=60, message="the worker to publish the burst")

    records = [r for r in read_topic(want_ids=rows) if r.envelope["id"] in rows]
    ids = [r.envelope["id"] for r in records]
    assert sorted(ids) == sorted(rows), "every event exactly once"
    for rec in records:
        row = rows[rec.envelope["id"]]
        assert rec.envelope == row.envelope
        jsonschema.validate(rec.envelope, SCHEMAS[row.type])
        assert rec.key == str(row.room_id).encode()
        assert rec.headers == {"event_type": row.type, "event_id": str(row.pk)}
    # Per partition, each room's whole log 1..last_seq in order: nothing skipped or reordered.
    by_room = {}
    for rec in sorted(records, key=lambda r: (r.partition, r.offset)):
        by_room.setdefault(rec.envelope["room"], []).append((rec.partition, rec.envelope["seq"]))
    for room in rooms:
        room.refresh_from_db()
        assert [seq for _, seq in by_room[room.pk]] == list(range(1, room.last_seq + 1))
        assert len({p for p, _ in by_room[room.pk]}) == 1
    # Commit-to-Kafka latency (the record's timestamp is the producer's send time).
    lags = sorted(
        rec.timestamp_ms / 1000
        - datetime.strptime(rec.envelope["ts"], "%Y-%m-%dT%H:%M:%S.%fZ")
        .replace(tzinfo=UTC)
        .timestamp()
        for rec in records
    )
    print(
        f"commit-to-send latency p50={lags[len(lags) // 2]:.3f}s p99={lags[int(len(lags) * 0.99)]:.3f}s"
    )


def test_broker_outage_sends_succeed_and_the_sweep_publishes_the_backlog_in_order(child_env):
    broker = Broker().start()
    fast = dict(
        KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap,
        OUTBOX_SWEEP_SECONDS=1,
        OUTBOX_RETRY_BASE_SECONDS=0.2,
        OUTBOX_RETRY_MAX_SECONDS=1,
        KAFKA_MAX_BLOCK_MS=1000,
        KAFKA_REQUEST_TIMEOUT_MS=1000,
        KAFKA_DELIVERY_TIMEOUT_MS=2000,
        OUTBOX_FLUSH_TIMEOUT_SECONDS=2,
    )
    worker = start_worker({**child_env, **{k: str(v) for k, v in fast.items()}}, beat=True)
    try:
        with override_settings(KAFKA_BOOTSTRAP_SERVERS=[broker.bootstrap]):
            # A kick "queued" but lost: with its key set no send enqueues a task, so only the
            # periodic sweep (beat, every second here) publishes in this test.
            sync_client().set(kick_key(), 1, px=120_000)
            owner = factories.make_user()
            rooms = [factories.make_room(owner) for _ in range(3)]
            wait_for(all_published, timeout=30, message="the beat sweep to publish")
            assert sync_client().exists(kick_key())  # no kick task ran: it was the sweep

            kill_broker(broker)
            outage = [
                factories.send(room, owner, body=f"outage {i}") for i in range(5) for room in rooms
            ]  # each send commits and returns
            outage_ids = {str(e.pk) for e in outage}
            wait_for(
                lambda: Outbox.objects.exclude(last_error="").exists(),
                timeout=30,
                message="a failed publish attempt to be recorded",
            )
            assert Event.objects.unpublished().count() == len(outage)

            broker = Broker(port=broker.port).start()  # empty: the topic must be re-created
            wait_for(all_published, timeout=60, message="the backlog after the broker returned")
            records = [
                r
                for r in read_topic([broker.bootstrap], want_ids=outage_ids)
                if r.envelope["id"] in outage_ids
            ]
            assert {r.envelope["id"] for r in records} == outage_ids
            rows = {str(e.pk): e for e in outage}
            assert_per_room_order(records, rows)
            for room in rooms:
                firsts = []
                for rec in sorted(records, key=lambda r: (r.partition, r.offset)):
                    if rec.envelope["room"] == room.pk and rec.envelope["seq"] not in firsts:
                        firsts.append(rec.envelope["seq"])
                assert firsts == sorted(e.seq for e in outage if e.room_id == room.pk)
    finally:
        worker.stop()
        kill_broker(broker)
        clear_kick()


def outbox_backlog(rooms, per_room: int) -> None:
    """Committed outbox rows, seq'd like the services do, written in bulk (a fast backlog)."""
    now = dj_timezone.now()
    made = []
    for room in rooms:
        for seq in range(room.last_seq + 1, room.last_seq + per_room + 1):
            made.append(Event(type="room.updated", room=room, seq=seq, ts=now, envelope={}))
            made[-1].envelope = ev.envelope(
                "room.updated",
                room_id=room.pk,
                seq=seq,
                actor=None,
                data=ev.room_updated({"topic": f"topic {seq}"}),
                ts=now,
                id=made[-1].id,
            )
        Room.objects.filter(pk=room.pk).update(last_seq=room.last_seq + per_room)
    Event.objects.bulk_create(made)


def test_worker_killed_mid_publish_loses_nothing_and_duplicates_share_the_id(child_env):
    rooms = [factories.make_room() for _ in range(10)]
    outbox_backlog(rooms, per_room=300)
    rows = {str(e.pk): e for e in Event.objects.all()}
    total = len(rows)
    env = {**child_env, "OUTBOX_BATCH_SIZE": "20"}
    worker = start_worker(env)
    kick_publisher()
    try:
        wait_for(
            lambda: 0 < Event.objects.published().count() < total,
            timeout=60,
            interval=0.005,
            message="publishing to be under way",
        )
        worker.kill()
        published = Event.objects.published().count()
        assert published < total, "the worker finished before it was killed"
    finally:
        worker.stop()
    worker = start_worker(env)
    clear_kick()
    kick_publisher()
    try:
        wait_for(all_published, timeout=60, message="the restarted worker to publish the rest")
    finally:
        worker.stop()
    # One producer per worker process, made after the fork, flushed and closed at shutdown.
    log = worker.output()
    started = re.findall(r"Kafka producer started in process (\d+)", log)
    closed = re.findall(r"Kafka producer of process (\d+) flushed and closed", log)
    assert started and sorted(started) == sorted(closed), log[-3000:]
    assert str(worker.proc.pid) not in started  # not the parent: the forked pool process
    records = [r for r in read_topic(want_ids=rows) if r.envelope["id"] in rows]
    assert {r.envelope["id"] for r in records} == set(rows), "nothing lost"
    for rec in records:  # a duplicate is the same event: same id, same envelope
        assert rec.envelope == rows[rec.envelope["id"]].envelope
    assert_per_room_order(records, rows)
    print(
        f"killed after {published}/{total} published; "
        f"{len(records) - total} duplicates after the restart"
    )


@pytest.mark.skipif(not settings.CELERY_BROKER_URL.startswith("redis"), reason="Redis broker only")
def test_after_commit_kicks_are_debounced_to_one_queued_task():
    client = sync_client()
    # The queue's Redis list, under the Celery key prefix of this deployment.
    queue = (
        settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("global_keyprefix", "")
        + settings.CELERY_TASK_DEFAULT_QUEUE
    )
    client.delete(kick_key())
    before = client.llen(queue)
    for _ in range(50):
        kick_publisher()
    assert client.llen(queue) == before + 1
    clear_kick()  # what the task does before reading the outbox
    kick_publisher()
    assert client.llen(queue) == before + 2
    client.lpop(queue, 2)  # our two kicks (no worker runs in this test)
    client.delete(kick_key())


def test_ephemeral_events_are_never_written_to_the_outbox():
    from apps.events.services import record_event

    room = factories.make_room()
    for type_ in ("typing", "presence.changed"):
        with pytest.raises(ValueError), transaction.atomic():
            record_event(type=type_, room=room, actor=None, data={})
    assert not Event.objects.filter(type__in=["typing", "presence.changed"]).exists()
    assert set(Event.objects.values_list("type", flat=True)) == {"room.created", "member.joined"}


def test_an_unban_reaches_kafka_with_its_reason(celery_worker):
    from apps.rooms import services as rooms

    owner, member = factories.make_user(), factories.make_user()
    room = factories.make_room(owner, members=[member])
    rooms.member_ban(room=room, actor=owner, user=member, reason="spam")
    rooms.member_unban(room=room, actor=owner, user=member, reason="appeal accepted")
    unbanned = Event.objects.get(room=room, type="member.unbanned")
    wait_for(all_published, timeout=60, message="the worker to publish the unban")
    records = [
        r for r in read_topic(want_ids={str(unbanned.pk)}) if r.envelope["id"] == str(unbanned.pk)
    ]
    assert len(records) == 1
    assert records[0].envelope == unbanned.envelope
    assert records[0].envelope["data"] == {
        "user": {"id": member.pk, "username": member.username},
        "reason": "appeal accepted",
    }
    assert records[0].headers == {"event_type": "member.unbanned", "event_id": str(unbanned.pk)}
