"""Kafka consumer groups (consume_events) and the mention-notification handler."""

from __future__ import annotations

import re
import signal
import threading
import uuid

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.test import override_settings

from apps.core.redis import sync_client
from apps.events import handlers, kafka, publisher
from apps.events.models import ConsumedEvent, Event
from apps.notifications import presence
from apps.notifications.handlers import MentionNotifications, mentioned_usernames
from apps.notifications.models import Notification
from apps.rooms import services as rooms
from tests import factories
from tests.events.kafka_support import wait_for
from tests.support.processes import ChildProcess
from tests.support.services import PYTHON

HANDLER = "apps.notifications.handlers.MentionNotifications"


def mention_room():
    author, away, other = (factories.make_user() for _ in range(3))
    room = factories.make_room(author, members=[away, other])
    return room, author, away, other


# --- The handler, in this process -------------------------------------------------------------


def test_mentions_are_parsed_like_usernames():
    assert mentioned_usernames("hi @ada, @bob.smith. mail x@y.org @@z") >= {"ada", "bob.smith"}
    assert "y.org" not in mentioned_usernames("mail x@y.org")
    assert mentioned_usernames("no mentions here") == set()


@pytest.mark.django_db
def test_a_mention_of_an_offline_member_is_notified_once_even_if_delivered_twice():
    room, author, away, _ = mention_room()
    envelope = factories.send(room, author, body=f"ping @{away.username}!").envelope
    handler = MentionNotifications()
    assert handlers.process("g", handler, envelope) == handlers.HANDLED
    assert handlers.process("g", handler, envelope) == handlers.DUPLICATE
    note = Notification.objects.get()
    assert (note.user, note.room_id, note.seq, note.actor) == (
        away,
        room.pk,
        envelope["seq"],
        author,
    )
    assert note.message_id == envelope["data"]["id"] and str(note.event_id) == envelope["id"]
    assert note.excerpt == f"ping @{away.username}!" and note.read_at is None


@pytest.mark.services
@pytest.mark.django_db
def test_the_author_and_non_members_are_not_notified_online_and_away_members_are():
    """Online members too: notification.created reaches their sockets, and the email only
    goes if the room stays unread (apps.notifications.email)."""
    room, author, away, online = mention_room()
    outsider, idle = factories.make_user(), factories.make_user()
    rooms.room_invite(room=room, actor=author, user=idle)
    keys = {online.pk: "online", idle.pk: "away"}  # as apps.users.presence publishes them
    for uid, status in keys.items():
        sync_client().set(presence.status_key(uid), status, ex=60)
    try:
        body = " ".join(f"@{u.username}" for u in (online, author, outsider, away, idle))
        envelope = factories.send(room, author, body=body).envelope
        handlers.process("g", MentionNotifications(), envelope)
    finally:
        sync_client().delete(*(presence.status_key(uid) for uid in keys))
    assert set(Notification.objects.values_list("user", flat=True)) == {away.pk, idle.pk, online.pk}


@pytest.mark.django_db
def test_deleting_the_message_removes_its_notifications():
    room, author, away, _ = mention_room()
    created = factories.send(room, author, body=f"@{away.username}")
    handler = MentionNotifications()
    handlers.process("g", handler, created.envelope)
    assert Notification.objects.count() == 1
    from apps.messaging import services as messaging

    message = messaging.get_message_or_404(created.envelope["data"]["id"], author)
    deleted = messaging.message_delete(message=message, actor=author)
    handlers.process("g", handler, deleted.envelope)
    assert Notification.objects.count() == 0


@pytest.mark.django_db
def test_a_failing_handler_leaves_nothing_and_the_event_is_handled_on_retry():
    room, author, away, _ = mention_room()
    envelope = factories.send(room, author, body=f"@{away.username}").envelope

    class Flaky(MentionNotifications):
        calls = 0

        def handle(self, envelope):
            super().handle(envelope)
            Flaky.calls += 1
            if Flaky.calls == 1:
                raise RuntimeError("database hiccup")

    handler = Flaky()
    with pytest.raises(RuntimeError):
        handlers.process("g", handler, envelope)
    assert not Notification.objects.exists() and not ConsumedEvent.objects.exists()
    assert handlers.process("g", handler, envelope) == handlers.HANDLED
    assert Notification.objects.count() == 1


@pytest.mark.django_db
def test_consume_events_refuses_an_unknown_group_or_handler_clearly():
    with pytest.raises(CommandError, match="no handler for group 'nope'"):
        call_command("consume_events", "--group", "nope")
    with pytest.raises(CommandError, match="cannot import handler"):
        call_command("consume_events", "--group", "x", "--handler", "apps.nothing.Here")
    with pytest.raises(CommandError, match="--group may contain"):
        call_command("consume_events", "--group", "bad group!")


# --- consume_events processes against the broker -------------------------------------------


class Consumer(ChildProcess):
    name = "consume-events"

    def __init__(self, env, group):
        super().__init__(
            [PYTHON, "manage.py", "consume_events", "--group", group, "--handler", HANDLER], env
        )

    def assignment(self):
        found = re.findall(r"assigned partitions \[([0-9, ]*)\]", self.output())
        return None if not found else [int(p) for p in found[-1].split(",") if p.strip()]


def publish_all():
    result = publisher.publish_pending()
    assert not result.errors, result.errors
    assert not Event.objects.unpublished().exists()


@pytest.mark.kafka
@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_a_group_of_two_handles_each_event_once_and_survives_a_sigterm(child_env):
    kafka.reset_producer()
    group = f"notifications-{uuid.uuid4().hex[:8]}"
    env = {
        **child_env,
        "KAFKA_CONSUMER_SESSION_TIMEOUT_MS": "3000",
        "KAFKA_CONSUMER_HEARTBEAT_MS": "500",
        "KAFKA_CONSUMER_MAX_POLL_INTERVAL_MS": "3000",
    }
    author, away = factories.make_user(), factories.make_user()
    rooms = [factories.make_room(author, members=[away]) for _ in range(6)]

    def mention_everywhere(n):
        sent = [
            factories.send(room, author, body=f"@{away.username} {i}")
            for i in range(n)
            for room in rooms
        ]
        publish_all()
        return {e.envelope["id"] for e in sent}

    first = mention_everywhere(3)
    a, b = Consumer(env, group).start(), Consumer(env, group).start()
    try:
        wait_for(
            lambda: Notification.objects.filter(event_id__in=first).count() == len(first),
            timeout=60,
            message="the group to handle the first events",
        )
        wait_for(
            lambda: a.assignment() and b.assignment(),
            timeout=30,
            message="both consumers to own partitions",
        )
        a.signal(signal.SIGTERM)
        assert a.proc.wait(20) == 0
        assert "left the group" in a.output()

        second = mention_everywhere(3)
        wait_for(
            lambda: Notification.objects.filter(event_id__in=second).count() == len(second),
            timeout=60,
            message="the remaining consumer to handle the events after the SIGTERM",
        )
        wait_for(
            lambda: b.assignment() == list(range(settings.KAFKA_PARTITIONS)),
            timeout=30,
            message="the survivor to own every partition",
        )
    finally:
        a.stop()
        b.stop()
    assert b.proc.returncode == 0, b.output()[-2000:]
    ours = first | second
    # Each event handled once: one dedupe row and one notification per event, nothing skipped.
    assert ConsumedEvent.objects.filter(group=group, event_id__in=ours).count() == len(ours)
    assert Notification.objects.filter(event_id__in=ours).count() == len(ours)
    assert set(Notification.objects.values_list("user", flat=True)) == {away.pk}


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_a_user_with_an_open_socket_counts_as_online_for_here(server):
    """@here reaches the members online now (presence from the server's sockets)."""
    from tests.support.wsclient import WS

    room, author, connected, offline = mention_room()
    socket = WS(server.ws_url, token=factories.make_token(connected))
    try:
        socket.hello()
        wait_for(
            lambda: presence.is_online(connected.pk),
            timeout=15,
            message="the server to publish the user's presence",
        )
        assert not presence.is_online(offline.pk)
        envelope = factories.send(room, author, body="@here standup").envelope
        handlers.process("g", MentionNotifications(), envelope)
        assert dict(Notification.objects.values_list("user_id", "kind")) == {connected.pk: "here"}
    finally:
        socket.close()


class Flaky(handlers.Handler):
    """Fails on one event `failures_left` times, records what it handled in order."""

    event_types = ("message.created",)

    def __init__(self, room_id, poison, failures):
        self.room_id, self.poison, self.failures_left = room_id, poison, failures
        self.failed = 0
        self.seen = []

    def handle(self, envelope):
        if envelope["room"] != self.room_id:
            return  # older tests' events on the shared topic
        if envelope["id"] == self.poison and self.failures_left:
            self.failures_left -= 1
            self.failed += 1
            raise RuntimeError("handler bug")
        self.seen.append(envelope["seq"])


def run_in_thread(runner):
    from django.db import connection

    def target():
        try:
            runner.run()
        finally:
            connection.close()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def lag(group, partition):
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(
        "chat_kafka_consumer_lag", {"group": group, "partition": str(partition)}
    )


SMALL_GROUP_TIMEOUTS = dict(
    KAFKA_CONSUMER_SESSION_TIMEOUT_MS=3000,
    KAFKA_CONSUMER_HEARTBEAT_MS=500,
    KAFKA_CONSUMER_MAX_POLL_INTERVAL_MS=3000,
)


@pytest.mark.kafka
@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_a_failing_event_is_retried_in_place_and_its_offset_is_not_committed_past_it():
    from kafka import KafkaAdminClient, TopicPartition

    from apps.events.consumer import GroupConsumer
    from tests.events.kafka_support import read_topic

    kafka.reset_producer()
    room = factories.make_room()
    sent = [factories.send(room, room.created_by, body=f"m{i}") for i in range(4)]
    publish_all()
    poison = sent[1].envelope["id"]
    record = next(r for r in read_topic(want_ids=[poison]) if r.envelope["id"] == poison)

    with override_settings(**SMALL_GROUP_TIMEOUTS):
        # A handler that never gets past the poison event: the group's offset stays on it.
        stuck_group = f"stuck-{uuid.uuid4().hex[:8]}"
        stuck = GroupConsumer(stuck_group, Flaky(room.pk, poison, failures=10**6))
        thread = run_in_thread(stuck)
        wait_for(lambda: stuck.handler.failed >= 2, timeout=60, message="retries of the poison")
        # The consumer-lag gauge shows the events held up behind it (poison + the 2 after).
        wait_for(
            lambda: (lag(stuck_group, record.partition) or 0) >= 3,
            timeout=15,
            message="consumer lag to be reported",
        )
        stuck.stop()
        thread.join(30)
        assert not thread.is_alive()
        assert stuck.handler.seen == [sent[0].envelope["seq"]]  # nothing after it was skipped to
        admin = KafkaAdminClient(**kafka.client_config())
        try:
            group_id = kafka.group_id(stuck_group)
            offsets = admin.list_group_offsets(group_id)[group_id]
        finally:
            admin.close()
        tp = TopicPartition(settings.KAFKA_EVENTS_TOPIC, record.partition)
        assert offsets[tp].offset == record.offset

        # A handler that fails twice, then works: every event handled once, in seq order.
        flaky = GroupConsumer(f"flaky-{uuid.uuid4().hex[:8]}", Flaky(room.pk, poison, failures=2))
        thread = run_in_thread(flaky)
        wait_for(lambda: len(flaky.handler.seen) == 4, timeout=60, message="all four events")
        wait_for(
            lambda: lag(flaky.group, record.partition) == 0,
            timeout=15,
            message="consumer lag back to 0",
        )
        flaky.stop()
        thread.join(30)
    assert flaky.handler.failed == 2
    assert flaky.handler.seen == [e.envelope["seq"] for e in sent]
