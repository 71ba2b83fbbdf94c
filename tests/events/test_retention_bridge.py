"""Retention and the Kafka bridge, with a real Celery worker running beat: the purge never
removes an event Kafka has not acknowledged, and removes it once it has."""

import time
from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from apps.events.models import Event, Outbox
from apps.events.outbox import clear_kick
from apps.rooms import services as rooms
from apps.rooms.models import Room
from tests import factories
from tests.events.kafka_support import kill_broker, read_topic, wait_for
from tests.events.test_bridge import all_published, start_worker
from tests.support.services import Broker

pytestmark = [pytest.mark.kafka, pytest.mark.services, pytest.mark.django_db(transaction=True)]


def purged_entirely(room) -> bool:
    room = Room.objects.get(pk=room.pk)
    return room.history_start == room.last_seq + 1 and not Event.objects.filter(room=room).exists()


def test_the_beat_purge_waits_for_kafka_and_removes_events_once_published(child_env):
    broker = Broker().start()
    fast = dict(
        KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap,
        OUTBOX_SWEEP_SECONDS=1,
        RETENTION_SWEEP_SECONDS=1,
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
            owner = factories.make_user()
            stuck_room, other_room = factories.make_room(owner), factories.make_room(owner)
            for room in (stuck_room, other_room):
                rooms.room_update(room=room, actor=owner, retention_days=1)
                for i in range(3):
                    factories.send(room, owner, body=f"published {i}")
            wait_for(all_published, timeout=60, message="the worker to publish")

            kill_broker(broker)
            outage = [factories.send(stuck_room, owner, body=f"outage {i}") for i in range(3)]
            outage_ids = {str(e.pk) for e in outage}
            # Every event of both rooms is now past retention; the outage ones are unpublished.
            Event.objects.filter(room__in=[stuck_room, other_room]).update(
                ts=timezone.now() - timedelta(days=2)
            )

            wait_for(
                lambda: purged_entirely(other_room),
                timeout=30,
                message="the beat purge to empty the published room",
            )
            wait_for(
                lambda: Outbox.objects.exclude(last_error="").exists(),
                timeout=30,
                message="a failed publish attempt",
            )
            time.sleep(2.5)  # more purge runs (RETENTION_SWEEP_SECONDS=1): still there
            stuck = Room.objects.get(pk=stuck_room.pk)
            assert stuck.history_start == outage[0].seq
            held = set(map(str, Event.objects.filter(room=stuck).values_list("pk", flat=True)))
            assert held == outage_ids

            broker = Broker(port=broker.port).start()  # empty: the topic is re-created
            wait_for(all_published, timeout=60, message="the backlog after the broker returned")
            wait_for(
                lambda: purged_entirely(stuck_room),
                timeout=30,
                message="the purge once Kafka acknowledged them",
            )
            records = [
                r
                for r in read_topic([broker.bootstrap], want_ids=outage_ids)
                if r.envelope["id"] in outage_ids
            ]
            assert {r.envelope["id"] for r in records} == outage_ids
            assert {r.envelope["data"]["body"] for r in records} == {
                "outage 0",
                "outage 1",
                "outage 2",
            }
    finally:
        worker.stop()
        kill_broker(broker)
        clear_kick()
