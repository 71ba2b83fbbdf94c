"""Retention over real sockets (a daphne ServerProcess, PostgreSQL and Redis): resuming from
before history_start is not an error, and the hub's gap filling does not stall on purged seqs."""

import uuid

import pytest
from django.db import transaction

from apps.messaging.retention import history_purge
from apps.rooms import services as rooms
from apps.rooms.models import Room
from tests import factories
from tests.messaging.test_retention import age, old_room, publish_all

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]


def test_subscribe_since_before_history_start_replays_from_it_without_error(
    start_server, user, room
):
    old_room(room, user, messages=5)
    kept = [factories.send(room, user, body=f"kept {i}") for i in range(3)]
    publish_all()
    history_purge()
    room = Room.objects.get(pk=room.pk)
    assert room.history_start == kept[0].seq

    server = start_server()
    client = server.open(user)
    subscribed = client.subscribe(room.pk, since=1)  # a client that last saw seq 1

    assert subscribed["type"] == "subscribed", subscribed
    assert subscribed["truncated"] is False
    assert subscribed["history_start"] == room.history_start
    assert subscribed["last_seq"] == subscribed["head"] == room.last_seq
    assert client.seqs(room.pk) == [e.seq for e in kept]
    assert [f["data"]["body"] for f in client.events(room.pk)] == ["kept 0", "kept 1", "kept 2"]
    # Live delivery goes on.
    live = factories.send(room, user, body="live")
    client.wait_seq(room.pk, live.seq)
    assert client.seqs(room.pk)[-1] == live.seq


def test_gap_filling_skips_seqs_purged_before_this_process_saw_them(start_server, user, room):
    # This server listens on other channel-layer groups than the ones the test process sends
    # to: live messages never reach it, only the event-log check does (as in
    # test_realtime.test_events_lost_by_the_channel_layer_are_recovered_from_the_log).
    from django.conf import settings

    server = start_server(
        CHANNELS_PREFIX=f"{settings.CHANNELS_PREFIX}gone{uuid.uuid4().hex[:8]}",
        CHAT_GAP_CHECK_SECONDS=1,
    )
    rooms.room_update(room=room, actor=user, retention_days=1)
    client = server.open(user)
    subscribed = client.subscribe(room.pk, since=0)
    head = subscribed["head"]
    # Events the process has not seen yet are purged before it could fill them: one commit.
    with transaction.atomic():
        for i in range(3):
            factories.send(room, user, body=f"gone {i}")
        age(room, days=3)
        history_purge()
    start = Room.objects.get(pk=room.pk).history_start
    assert start == head + 4  # the whole log went, the 3 new messages too

    after = factories.send(room, user, body="after the purge")
    assert after.seq == start
    client.wait_seq(room.pk, after.seq, timeout=20)
    received = client.events(room.pk)
    assert [f["seq"] for f in received if f["seq"] > head] == [after.seq]
    assert received[-1]["data"]["body"] == "after the purge"
