"""Test data, made through the same services production uses."""

import itertools
import uuid

from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

from apps.messaging import services as messaging
from apps.rooms import services as rooms
from apps.rooms.models import Room

_counter = itertools.count(1)


def make_user(username=None, password="pw-for-tests-1", **extra):
    User = get_user_model()
    username = username or f"user{next(_counter)}"
    return User.objects.create_user(username=username, password=password, **extra)


def make_token(user) -> str:
    return Token.objects.get_or_create(user=user)[0].key


def make_room(owner=None, *, name=None, kind=Room.Kind.PUBLIC, members=()):
    owner = owner or make_user()
    room = rooms.room_create(
        creator=owner,
        name=name or f"room {next(_counter)}",
        kind=kind,
        member_ids=[m.pk for m in members],
    )
    return room


def send(room, author, body="hello", client_id=None, **kwargs):
    return messaging.message_send(
        room=room, author=author, body=body, client_id=client_id or uuid.uuid4(), **kwargs
    )


def make_moderator(**extra):
    """A site moderator: staff in the Moderators group (created by a migration), not a superuser."""
    from importlib import import_module

    from django.apps import apps

    # A transactional test's flush empties the group the migration made: make it again.
    group = import_module(
        "apps.moderation.migrations.0002_moderators_see_event_log_reports_accounts"
    ).ensure_group(apps)
    user = make_user(is_staff=True, **extra)
    user.groups.add(group)
    return user


def api_client(user=None, *, token=False):
    """A DRF test client, authenticated as `user` (by session force, or by its API token)."""
    from rest_framework.test import APIClient

    client = APIClient()
    if user is not None:
        if token:
            client.credentials(HTTP_AUTHORIZATION=f"Token {make_token(user)}")
        else:
            client.force_authenticate(user)
    return client


def mark_unpublished(events) -> None:
    """Put events back in the outbox, as if Kafka had never acknowledged them."""
    from apps.events.models import Outbox

    Outbox.objects.bulk_create(
        [Outbox(event_id=e.pk, room_id=e.room_id, seq=e.seq, ts=e.ts) for e in events],
        ignore_conflicts=True,
    )
