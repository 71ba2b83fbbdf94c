"""notification.created live over the WebSocket (through a real server, Celery worker and
Redis), and the unread-notification email against a real SMTP server started here."""

from __future__ import annotations

import time
from datetime import timedelta
from email import message_from_bytes

import pytest
from django.test import override_settings
from django.utils import timezone

from apps.events.schemas import SCHEMAS
from apps.notifications import mentions
from apps.notifications.models import Notification
from apps.notifications.tasks import email_unread_notifications
from apps.rooms import services as rooms
from apps.rooms.models import Room
from tests import factories
from tests.support.services import free_port
from tests.support.wsclient import WS

# --- Live --------------------------------------------------------------------------------------


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_notification_created_reaches_the_users_sockets_not_subscribed_to_the_room(
    server, celery_worker
):
    import jsonschema

    author, ada, bob = (factories.make_user() for _ in range(3))
    room = factories.make_room(author, members=[ada, bob])
    elsewhere = factories.make_room(ada)
    idle = WS(server.ws_url, token=factories.make_token(ada))  # subscribed to nothing
    busy = WS(server.ws_url, token=factories.make_token(ada))  # in another room
    other = WS(server.ws_url, token=factories.make_token(bob))
    sender = WS(server.ws_url, token=factories.make_token(author))
    try:
        for socket in (idle, busy, other, sender):
            socket.hello()
        busy.subscribe(elsewhere.pk)
        sender.subscribe(room.pk)
        started = time.monotonic()
        ack = sender.send_message(room.pk, body=f"look @{ada.username}")
        assert ack["type"] == "ack", ack
        frames = [
            s.until(lambda f: f["type"] == "notification.created", timeout=30) for s in (idle, busy)
        ]
        took = time.monotonic() - started
        for frame in frames:
            jsonschema.validate(frame, SCHEMAS["notification.created"])
            note = frame["data"]["notification"]
            assert (note["kind"], note["room"], note["seq"], note["message"]) == (
                "mention",
                room.pk,
                ack["event"]["seq"],
                ack["event"]["data"]["id"],
            )
            assert frame["actor"]["id"] == author.pk and frame["seq"] is None
        assert frames[0]["id"] == frames[1]["id"]
        # Nobody else got it (bob was not mentioned; the author neither).
        sender.send_message(room.pk, body="a marker")
        for socket in (other, sender):
            with pytest.raises(TimeoutError):
                socket.until(lambda f: f["type"] == "notification.created", timeout=1.5)
        listed = factories.api_client(ada).get("/api/notifications/").json()["results"]
        assert [n["id"] for n in listed] == [frames[0]["data"]["notification"]["id"]]
        # Warm (broker connections open, task imported): the second one's latency.
        started = time.monotonic()
        sender.send_message(room.pk, body=f"again @{ada.username}")
        idle.until(lambda f: f["type"] == "notification.created", timeout=30)
        warm = time.monotonic() - started
        print(
            f"send -> notification.created on the socket: first {took * 1000:.0f} ms, "
            f"then {warm * 1000:.0f} ms"
        )
    finally:
        for socket in (idle, busy, other, sender):
            socket.close()


# --- Email ------------------------------------------------------------------------------------


class Inbox:
    """Messages the SMTP server accepted: (envelope recipients, parsed message)."""

    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((list(envelope.rcpt_tos), message_from_bytes(envelope.content)))
        return "250 OK"


@pytest.fixture
def smtp():
    """A real SMTP server (aiosmtpd) on a spare port; Django's SMTP backend pointed at it."""
    from aiosmtpd.controller import Controller

    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        with override_settings(
            EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
            EMAIL_HOST="127.0.0.1",
            EMAIL_PORT=controller.port,
            EMAIL_USE_TLS=False,
            EMAIL_HOST_USER="",
            NOTIFY_EMAIL_AFTER_MINUTES=10,
        ):
            yield inbox
    finally:
        controller.stop()


def age(minutes, **filters):
    Notification.objects.filter(**filters).update(
        created_at=timezone.now() - timedelta(minutes=minutes)
    )


def mention_world():
    author = factories.make_user()
    ada = factories.make_user(email="ada@example.org")
    bob = factories.make_user(email="bob@example.org")
    nomail = factories.make_user()
    room = factories.make_room(author, name="general", members=[ada, bob, nomail])
    side = factories.make_room(author, name="side", members=[ada])
    return author, ada, bob, nomail, room, side


def body_of(message) -> str:
    return message.get_payload(decode=True).decode()


@pytest.mark.django_db
def test_unread_notifications_are_emailed_once_batched_per_user(smtp):
    author, ada, bob, nomail, room, side = mention_world()
    factories.send(room, author, body=f"@{ada.username} first")
    factories.send(side, author, body=f"@{ada.username} second")
    factories.send(room, author, body=f"@{bob.username} @{nomail.username} hi")
    mentions.process_pending()
    assert Notification.objects.count() == 4
    age(11)
    assert email_unread_notifications() is None  # the Celery task, run in this process
    assert sorted(rcpt for rcpt, _ in smtp.messages) == [["ada@example.org"], ["bob@example.org"]]
    to_ada = next(m for rcpt, m in smtp.messages if rcpt == ["ada@example.org"])
    text = body_of(to_ada)
    assert to_ada["Subject"] == "2 unread mentions"
    assert "general" in text and "first" in text and "side" in text and "second" in text
    assert Notification.objects.filter(user=ada, emailed_at__isnull=False).count() == 2
    # Once: the next run sends nothing; the user without an address is never emailed.
    email_unread_notifications()
    assert len(smtp.messages) == 2
    assert Notification.objects.get(user=nomail).emailed_at is None


@pytest.mark.django_db
def test_not_emailed_before_the_delay_nor_when_read_in_the_room_meanwhile(smtp):
    author, ada, bob, _, room, _ = mention_world()
    factories.send(room, author, body=f"@{ada.username} @{bob.username}")
    mentions.process_pending()
    age(5)
    email_unread_notifications()
    assert smtp.messages == []  # too young
    # bob reads the room (his read position passes the mention), ada does not.
    last = Room.objects.get(pk=room.pk).last_seq
    rooms.mark_read(room=room, user=bob, seq=last)
    age(11)
    email_unread_notifications()
    assert [rcpt for rcpt, _ in smtp.messages] == [["ada@example.org"]]


@pytest.mark.django_db
def test_read_position_at_sending_time_decides_not_presence_at_mention_time(smtp):
    """A read position moved without the notification being marked (say, written before this
    feature existed) still counts: the email looks at the read position when it runs."""
    author, ada, _, _, room, _ = mention_world()
    factories.send(room, author, body=f"@{ada.username}")
    mentions.process_pending()
    last = Room.objects.get(pk=room.pk).last_seq
    room.memberships.filter(user=ada).update(last_read_seq=last)
    age(30)
    email_unread_notifications()
    assert smtp.messages == []
    assert Notification.objects.get(user=ada).read_at is not None


@pytest.mark.django_db
def test_an_smtp_failure_leaves_the_notifications_due(smtp):
    author, ada, _, _, room, _ = mention_world()
    factories.send(room, author, body=f"@{ada.username}")
    mentions.process_pending()
    age(11)
    with override_settings(EMAIL_PORT=free_port()), pytest.raises(OSError):  # nobody listens
        email_unread_notifications()
    assert Notification.objects.get(user=ada).emailed_at is None
    email_unread_notifications()
    assert len(smtp.messages) == 1
