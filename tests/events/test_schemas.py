"""Every event the services produce matches its type's JSON Schema (apps.events.schemas)."""

from __future__ import annotations

from datetime import timedelta
from unittest import mock

import jsonschema
import pytest
from django.utils import timezone

from apps.events import catalogue as ev
from apps.events.catalogue import CATALOGUE, EPHEMERAL_TYPES
from apps.events.models import Event
from apps.events.schemas import SCHEMAS
from apps.messaging import send_orm, send_pg
from apps.messaging import services as messaging
from apps.moderation import services as moderation
from apps.notifications import mentions
from apps.notifications.models import Notification
from apps.rooms import services as rooms
from apps.rooms.models import Room
from tests import factories

pytestmark = pytest.mark.django_db

FORMATS = jsonschema.Draft202012Validator.FORMAT_CHECKER


def validate(envelope):
    jsonschema.Draft202012Validator(SCHEMAS[envelope["type"]], format_checker=FORMATS).validate(
        envelope
    )


def every_service_once():
    """Drive every service that records an event; returns the ephemeral envelopes too."""
    owner, mod, member, other = (factories.make_user() for _ in range(4))
    room = factories.make_room(owner, members=[mod, member])
    rooms.room_update(room=room, actor=owner, name="renamed", topic="a topic")
    rooms.member_set_role(room=room, actor=owner, user=mod, role="moderator")
    rooms.room_join(room=room, user=other)
    rooms.member_mute(
        room=room,
        actor=mod,
        user=member,
        until=timezone.now() + timedelta(hours=1),
        reason="calm down",
    )
    rooms.member_mute(room=room, actor=mod, user=member, until=None)
    first = factories.send(room, owner, body="hello @" + member.username)
    mentions.process_pending()  # the mention worker: notification.created (not in the log)
    notified = [mentions.created_envelope(n) for n in Notification.objects.all()]
    fanned = []  # thread.updated: the send path fans it out, never stores it
    real = send_pg.send_events_on_commit

    def spy(items):
        fanned.extend(items)
        real(items)

    with (
        mock.patch.object(send_orm, "send_events_on_commit", spy),
        mock.patch.object(send_pg, "send_events_on_commit", spy),
    ):
        reply = factories.send(room, mod, body="re", reply_to=first.envelope["data"]["id"])
    message = messaging.get_message_or_404(first.envelope["data"]["id"], owner)
    messaging.message_edit(message=message, actor=owner, body="hello again")
    moderation.report_create(message=message, reporter=member, category="spam", reason="ads")
    messaging.reaction_add(message=message, user=mod, emoji="👍")
    messaging.reaction_remove(message=message, user=mod, emoji="👍")
    reply_msg = messaging.get_message_or_404(reply.envelope["data"]["id"], mod)
    messaging.message_delete(message=reply_msg, actor=owner)  # by a moderator (the owner)
    rooms.mark_read(room=room, user=member, seq=Room.objects.get(pk=room.pk).last_seq)
    rooms.member_ban(
        room=room, actor=owner, user=other, reason="spam", until=timezone.now() + timedelta(days=1)
    )
    rooms.member_ban(room=room, actor=owner, user=mod, reason="")
    rooms.member_unban(room=room, actor=owner, user=mod, reason="appealed")
    rooms.member_unban(room=room, actor=owner, user=other)
    rooms.room_update(room=room, actor=owner, slow_mode_seconds=30, post_policy="moderators")
    rooms.member_kick(room=room, actor=owner, user=member, reason="flooding")
    direct = rooms.direct_room_open(user=owner, other=other)
    assert direct.kind == Room.Kind.DIRECT
    leaver = factories.make_user()
    rooms.room_join(room=room, user=leaver)
    rooms.room_leave(room=room, user=leaver)
    rooms.room_archive(room=room, actor=owner)
    now = timezone.now()
    return (
        notified
        + [
            ev.envelope(
                "typing",
                room_id=room.pk,
                seq=None,
                actor=owner,
                data=ev.typing(owner, state=True),
                ts=now,
            ),
            ev.envelope(
                "presence.changed",
                room_id=None,
                seq=None,
                actor=owner,
                data=ev.presence_changed(owner, status="away"),
                ts=now,
            ),
        ]
        + [item[0] for item in fanned if item[0]["type"] == "thread.updated"]
    )


def test_every_event_type_produced_by_the_services_matches_its_schema():
    ephemeral = every_service_once()
    envelopes = [e.envelope for e in Event.objects.order_by("ts")] + ephemeral
    for envelope in envelopes:
        validate(envelope)
    assert {e["type"] for e in envelopes} == set(CATALOGUE), "a type was never produced"
    assert {e["type"] for e in ephemeral} == set(EPHEMERAL_TYPES)


@pytest.mark.parametrize(
    "break_it",
    [
        lambda e: e.pop("actor"),
        lambda e: e.update(seq=None),
        lambda e: e.update(ts="2026-11-26T11:00:00Z"),  # no microseconds
        lambda e: e.update(id="not-a-uuid"),
        lambda e: e["data"].pop("client_id"),
        lambda e: e["data"].update(extra=1),
        lambda e: e.update(type="message.edited"),
    ],
)
def test_a_malformed_envelope_fails_its_schema(break_it):
    owner = factories.make_user()
    room = factories.make_room(owner)
    envelope = factories.send(room, owner, body="x").envelope
    validate(envelope)
    break_it(envelope)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(
            SCHEMAS["message.created"], format_checker=FORMATS
        ).validate(envelope)
