"""Retention (PROTOCOL §6): old messages, their reactions and events go, oldest first, in
batches; history_start moves; resuming from before it is not an error; unpublished events stay.

The purge is called directly here (the worker adds nothing to these); the bridge test with a
real Celery worker, beat and a broker outage is in tests/events/test_retention_bridge.py."""

import uuid
from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from apps.events.models import Event
from apps.messaging import services as messaging
from apps.messaging.models import Message, Reaction
from apps.messaging.retention import history_purge, room_purge_batch, rooms_due
from apps.notifications.models import Notification
from apps.rooms import services as rooms
from apps.rooms.models import Room
from tests import factories

pytestmark = pytest.mark.django_db


def age(room, *, days, upto_seq=None, published=True):
    """Make the room's events (up to a seq) and their messages `days` old, published to Kafka
    (or not) as a running publisher would have."""
    old = timezone.now() - timedelta(days=days)
    events = Event.objects.filter(room=room)
    messages = Message.objects.filter(room=room)
    if upto_seq is not None:
        events, messages = events.filter(seq__lte=upto_seq), messages.filter(seq__lte=upto_seq)
    events.update(ts=old)
    if published:
        events.mark_published()
    else:
        factories.mark_unpublished(events)
    messages.update(created_at=old)


def old_room(room, user, *, messages, retention_days=1, days=5, published=True) -> int:
    """`messages` sent into the room, its retention set, and all of its log made `days` old;
    returns the room's last seq."""
    for i in range(messages):
        factories.send(room, user, body=f"old {i}")
    rooms.room_update(room=room, actor=user, retention_days=retention_days)
    age(room, days=days, published=published)
    return fresh(room).last_seq


def publish_all():
    Event.objects.mark_published()


def fresh(room) -> Room:
    return Room.objects.get(pk=room.pk)


def held_seqs(room) -> list[int]:
    return list(
        Event.objects.filter(room=room).sequenced().order_by("seq").values_list("seq", flat=True)
    )


def test_old_messages_reactions_notifications_and_events_go_and_history_start_moves(
    room, user, other_user
):
    rooms.room_join(room=room, user=other_user)
    old_messages = [factories.send(room, user, body=f"old {i}").envelope for i in range(4)]
    target = Message.objects.get(pk=old_messages[0]["data"]["id"])
    messaging.reaction_add(message=target, user=other_user, emoji="👍")
    rooms.mark_read(room=room, user=other_user, seq=fresh(room).last_seq)
    Notification.objects.create(
        user=other_user,
        event_id=uuid.uuid4(),
        room=room,
        seq=target.seq,
        message_id=target.pk,
        excerpt="old 0",
    )
    old_head = fresh(room).last_seq
    age(room, days=10)
    Event.objects.filter(room=room, type="receipt.updated").update(
        ts=timezone.now() - timedelta(days=10)
    )
    rooms.room_update(room=room, actor=user, retention_days=7)  # a new event: room.updated
    kept = factories.send(room, user, body="new")
    publish_all()

    result = history_purge()

    assert result.rooms == 1 and result.events == old_head and result.messages == 4
    assert result.receipts == 1
    assert fresh(room).history_start == old_head + 1
    assert held_seqs(room) == [old_head + 1, old_head + 2]
    assert list(Message.objects.filter(room=room).values_list("body", flat=True)) == ["new"]
    assert not Reaction.objects.filter(message_id=target.pk).exists()
    assert not Notification.objects.filter(room=room).exists()
    assert not Event.objects.filter(room=room, type="receipt.updated").exists()
    assert kept.seq == fresh(room).last_seq
    # Nothing left to do: the next run finds no room.
    assert rooms_due(timezone.now()) == [] and history_purge().events == 0


def test_a_kept_reply_to_a_purged_message_loses_the_link_not_its_text(room, user):
    old = factories.send(room, user, body="the question")
    old_room(room, user, messages=0)
    reply = factories.send(room, user, body="the answer", reply_to=old.envelope["data"]["id"])
    publish_all()

    history_purge()

    kept = Message.objects.get(pk=reply.envelope["data"]["id"])
    assert kept.body == "the answer" and kept.reply_to_id is None
    assert not Message.objects.filter(pk=old.envelope["data"]["id"]).exists()


def test_a_room_with_no_new_activity_is_purged_entirely(room, user):
    head = old_room(room, user, messages=3, days=2)

    history_purge()

    assert held_seqs(room) == []
    assert fresh(room).history_start == head + 1 and fresh(room).last_seq == head
    assert not Message.objects.filter(room=room).exists()
    # The room still works: the next event is head + 1, the first one held.
    event = factories.send(room, user, body="back")
    assert event.seq == head + 1 and held_seqs(room) == [head + 1]


def test_unpublished_events_and_everything_after_them_are_kept(room, user):
    head = old_room(room, user, messages=6)
    stuck = head - 2
    factories.mark_unpublished(Event.objects.filter(room=room, seq=stuck))

    with override_settings(KAFKA_BOOTSTRAP_SERVERS=["127.0.0.1:9"]):  # publishing on
        history_purge()
        assert fresh(room).history_start == stuck
        assert held_seqs(room) == list(range(stuck, head + 1))
        assert Message.objects.filter(room=room, seq__gte=stuck).count() == 2

        Event.objects.filter(room=room, seq=stuck).mark_published()
        history_purge()
    assert held_seqs(room) == [] and fresh(room).history_start == head + 1


def test_with_publishing_off_nothing_waits_for_kafka(room, user):
    old_room(room, user, messages=1, published=False)

    with override_settings(KAFKA_BOOTSTRAP_SERVERS=[]):
        history_purge()

    assert held_seqs(room) == []


def test_the_purge_is_a_prefix_it_stops_at_the_first_event_inside_retention(room, user):
    head = old_room(room, user, messages=5, retention_days=3, days=10)
    young = head - 3
    Event.objects.filter(room=room, seq=young).update(ts=timezone.now() - timedelta(days=2))

    history_purge()

    # Older events after it stay until it goes: history_start says exactly what is gone.
    assert fresh(room).history_start == young
    assert held_seqs(room) == list(range(young, head + 1))


def test_purge_runs_in_bounded_batches_oldest_first(room, user):
    head = old_room(room, user, messages=10)
    now = timezone.now()

    first = room_purge_batch(room_id=room.pk, now=now, batch_size=4)
    assert first.events == 4 and held_seqs(room)[0] == 5 and fresh(room).history_start == 5
    second = room_purge_batch(room_id=room.pk, now=now, batch_size=4)
    assert second.events == 4 and fresh(room).history_start == 9

    total = history_purge(batch_size=4)
    assert total.events == head - 8 and held_seqs(room) == []


def test_site_default_applies_to_rooms_without_their_own_retention(user):
    default_room = factories.make_room(user)
    longer_room = factories.make_room(user)
    rooms.room_update(room=longer_room, actor=user, retention_days=30)
    for room in (default_room, longer_room):
        factories.send(room, user, body="ten days old")
        age(room, days=10)

    with override_settings(RETENTION_DAYS=None):
        assert history_purge().events == 0  # keep forever, but for rooms that say otherwise
    with override_settings(RETENTION_DAYS=7):
        assert rooms_due(timezone.now()) == [default_room.pk]
        history_purge()

    assert held_seqs(default_room) == []
    assert held_seqs(longer_room) == list(range(1, fresh(longer_room).last_seq + 1))


def test_rest_events_since_below_history_start_start_at_it_without_error(room, user):
    old_room(room, user, messages=4)
    factories.send(room, user, body="kept 1")
    factories.send(room, user, body="kept 2")
    publish_all()
    history_purge()
    start, head = fresh(room).history_start, fresh(room).last_seq

    page = factories.api_client(user).get(f"/api/rooms/{room.pk}/events/?since=0&limit=1")
    assert page.status_code == 200
    body = page.json()
    assert body["history_start"] == start and body["last_seq"] == head
    assert [e["seq"] for e in body["results"]] == [start]
    rest = factories.api_client(user).get(body["next"]).json()
    assert [e["seq"] for e in rest["results"]] == [head]
    assert [e["data"]["body"] for e in body["results"] + rest["results"]] == ["kept 1", "kept 2"]


def test_patch_retention_days_by_moderators_is_validated_and_announced(room, user, other_user):
    rooms.room_join(room=room, user=other_user)
    owner = factories.api_client(user)
    url = f"/api/rooms/{room.pk}/"

    for bad in (0, -1, 36501, "seven", 1.5, True):
        reply = owner.patch(url, {"retention_days": bad}, format="json")
        assert reply.status_code == 400, bad
        assert reply.json()["code"] == "invalid"
    assert fresh(room).retention_days is None

    member = factories.api_client(other_user).patch(url, {"retention_days": 7}, format="json")
    assert member.status_code == 403 and member.json()["code"] == "forbidden"

    reply = owner.patch(url, {"retention_days": 7}, format="json")
    assert reply.status_code == 200
    assert reply.json()["retention_days"] == 7 and reply.json()["history_start"] == 1
    event = Event.objects.filter(room=room, type="room.updated").latest("seq")
    assert event.envelope["data"] == {"retention_days": 7}

    assert owner.patch(url, {"topic": "same retention"}, format="json").status_code == 200
    assert fresh(room).retention_days == 7  # untouched when not given

    reply = owner.patch(url, {"retention_days": None}, format="json")
    assert reply.status_code == 200 and reply.json()["retention_days"] is None
    event = Event.objects.filter(room=room, type="room.updated").latest("seq")
    assert event.envelope["data"] == {"retention_days": None}
    assert owner.get(url).json()["retention_days"] is None


def test_direct_rooms_have_no_retention_of_their_own(user, other_user):
    direct = rooms.direct_room_open(user=user, other=other_user)
    moderator = factories.make_moderator()
    reply = factories.api_client(moderator).patch(
        f"/api/rooms/{direct.pk}/", {"retention_days": 3}, format="json"
    )
    assert reply.status_code in (403, 404)
    assert fresh(direct).retention_days is None


def seed_old_log(room, author, count, *, days=10) -> None:
    """`count` old, published messages with their message.created events, written in bulk."""
    from apps.events import catalogue as ev

    old = timezone.now() - timedelta(days=days)
    start = fresh(room).last_seq
    for offset in range(0, count, 5000):
        seqs = range(start + offset + 1, start + min(count, offset + 5000) + 1)
        messages = Message.objects.bulk_create(
            [
                Message(room=room, author=author, seq=seq, created_at=old, body=f"old {seq}")
                for seq in seqs
            ]
        )
        events = []
        for message in messages:
            event = Event(
                type="message.created",
                room=room,
                seq=message.seq,
                actor=author,
                ts=old,
            )
            event.envelope = ev.envelope(
                "message.created",
                room_id=room.pk,
                seq=message.seq,
                actor=author,
                data=ev.message_created(message),
                ts=old,
                id=event.id,
            )
            events.append(event)
        Event.objects.bulk_create(events)
        Event.objects.filter(pk__in=[e.pk for e in events]).mark_published()
    Room.objects.filter(pk=room.pk).update(last_seq=start + count)


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_the_room_stays_writable_while_a_large_backlog_is_purged(user):
    import threading
    import time

    from django.db import connection

    room = factories.make_room(user)
    rooms.room_update(room=room, actor=user, retention_days=1)
    age(room, days=10)
    seed_old_log(room, user, 30_000)
    publish_all()
    latencies, purged, quiet = [], {}, []
    for i in range(20):  # the same sends with no purge running, for comparison
        started = time.monotonic()
        factories.send(room, user, body=f"before the purge {i}")
        quiet.append(time.monotonic() - started)

    def purge():
        try:
            started = time.monotonic()
            purged["result"] = history_purge()  # RETENTION_BATCH_SIZE: 500
            purged["seconds"] = time.monotonic() - started
        finally:
            connection.close()

    purger = threading.Thread(target=purge)
    purger.start()
    while purger.is_alive() and len(latencies) < 2000:
        started = time.monotonic()
        factories.send(room, user, body=f"during the purge {len(latencies)}")
        latencies.append(time.monotonic() - started)
    purger.join()

    result = purged["result"]
    assert result.messages >= 30_000 and fresh(room).history_start > 30_000
    assert Message.objects.filter(room=room).count() == len(latencies) + 20  # every send went in
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1] if len(latencies) >= 100 else latencies[-1]
    print(
        f"purged {result.events} events in {purged['seconds']:.1f} s; {len(latencies)} sends "
        f"meanwhile: p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms "
        f"(without a purge: p50 {sorted(quiet)[10] * 1000:.1f} ms)"
    )
    assert latencies and latencies[-1] < 2.0  # one batch's lock at most, never the whole purge
