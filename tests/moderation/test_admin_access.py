"""Every admin page, walked as a member of Moderators and as a staff user who is not one: the
moderators reach exactly the moderation pages (rooms, memberships, messages, the moderation
log, the event log, reports, accounts) and read-only; the other staff user reaches none."""

import uuid

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse
from rest_framework.authtoken.models import Token

from apps.attachments.models import Upload
from apps.events.models import ConsumedEvent, Event
from apps.integrations import services as integrations
from apps.integrations.models import OutgoingWebhook
from apps.messaging.models import Message
from apps.moderation import services as moderation
from apps.moderation.models import Account
from apps.notifications.models import MentionCursor, Notification
from apps.rooms.models import Membership, ModerationAction
from tests import factories

pytestmark = pytest.mark.django_db

# What a Moderators member may open (read-only: no add, change or delete anywhere).
MODERATOR_VIEWS = {
    "rooms.room",
    "rooms.membership",
    "rooms.moderationaction",
    "messaging.message",
    "events.event",
    "moderation.report",
    "moderation.account",
}
MODERATOR_APPS = {"rooms", "messaging", "events", "moderation"}


@pytest.fixture
def objects(db):
    """One object of every registered model."""
    owner, member = factories.make_user(), factories.make_user()
    room = factories.make_room(owner, members=[member])
    message = Message.objects.get(pk=factories.send(room, member, "hi").envelope["data"]["id"])
    report, _ = moderation.report_create(message=message, reporter=owner, category="spam")
    ModerationAction.objects.create(room=room, actor=owner, target_user=member, action="kick")
    Notification.objects.create(user=owner, event_id=uuid.uuid4(), room=room, seq=1)
    ConsumedEvent.objects.create(group="g", event_id=uuid.uuid4())
    Token.objects.create(user=owner)
    upload = Upload.objects.create(  # attached: the message's page shows its files
        owner=member,
        message=message,
        name="a.txt",
        size=1,
        content_type="text/plain",
        file="none/a.txt",
    )
    incoming, _ = integrations.incoming_create(room=room, actor=owner, name="ci")
    outgoing = OutgoingWebhook.objects.create(
        owner=owner, url="https://example.com/hook", secret="s" * 32
    )
    return {
        "attachments.upload": upload,
        "integrations.incomingwebhook": incoming,
        "integrations.outgoingwebhook": outgoing,
        "auth.group": Group.objects.get(name="Moderators"),
        "authtoken.tokenproxy": Token.objects.get(user=owner),
        "users.user": owner,
        "rooms.room": room,
        "rooms.membership": Membership.objects.filter(room=room).first(),
        "rooms.moderationaction": ModerationAction.objects.first(),
        "messaging.message": message,
        "events.event": Event.objects.first(),
        "events.consumedevent": ConsumedEvent.objects.first(),
        "notifications.notification": Notification.objects.first(),
        "notifications.mentioncursor": MentionCursor.objects.get_or_create(room=room)[0],
        "moderation.report": report,
        "moderation.account": Account.objects.get(pk=member.pk),
    }


def every_admin_page(objects):
    """(label, view, url) for every page of every registered model."""
    pages = []
    for model in admin.site._registry:
        label = model._meta.label_lower
        info = (model._meta.app_label, model._meta.model_name)
        obj = objects[label]
        pk = obj.user_id if label == "authtoken.tokenproxy" else obj.pk  # DRF maps user ids
        pages += [
            (label, "changelist", reverse("admin:%s_%s_changelist" % info)),
            (label, "add", reverse("admin:%s_%s_add" % info)),
            (label, "change", reverse("admin:%s_%s_change" % info, args=[pk])),
            (label, "history", reverse("admin:%s_%s_history" % info, args=[pk])),
            (label, "delete", reverse("admin:%s_%s_delete" % info, args=[pk])),
        ]
    return pages


def test_every_registered_model_is_walked(objects):
    assert {m._meta.label_lower for m in admin.site._registry} == set(objects)


def test_moderators_reach_exactly_the_moderation_pages_read_only(objects):
    client = Client()
    client.force_login(factories.make_moderator())
    assert client.get(reverse("admin:index")).status_code == 200
    reached = {}
    for label, view, url in every_admin_page(objects):
        reached[(label, view)] = client.get(url).status_code
    expected = {
        (label, view): 200
        if label in MODERATOR_VIEWS and view in ("changelist", "change", "history")
        else 403
        for label, view, _ in every_admin_page(objects)
    }
    assert reached == expected
    for app in {m._meta.app_label for m in admin.site._registry}:
        status = client.get(reverse("admin:app_list", args=[app])).status_code
        assert status == (200 if app in MODERATOR_APPS else 404), app


def test_staff_who_are_not_moderators_reach_no_model_page(objects):
    staff = factories.make_user(is_staff=True)
    client = Client()
    client.force_login(staff)
    assert client.get(reverse("admin:index")).status_code == 200
    reached = {
        (label, view): client.get(url).status_code for label, view, url in every_admin_page(objects)
    }
    assert set(reached.values()) == {403}, reached
    report = objects["moderation.report"]
    url = reverse("admin:moderation_report_change", args=[report.pk])
    assert client.post(url, {"action": "delete", "reason": "x"}).status_code == 403
    report.refresh_from_db()
    assert report.status == "open" and not report.message.is_deleted
    for app in {m._meta.app_label for m in admin.site._registry}:
        assert client.get(reverse("admin:app_list", args=[app])).status_code == 404


def test_anonymous_visitors_are_sent_to_the_login_page(objects):
    for _, _, url in every_admin_page(objects)[:10]:
        answer = Client().get(url)
        assert answer.status_code == 302 and "/admin/login/" in answer["Location"]
