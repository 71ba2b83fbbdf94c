"""Room and membership services: each write and its permission rule."""

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.core.errors import ServiceError
from apps.events.models import Event
from apps.messaging import services as messaging
from apps.messaging.models import Message
from apps.rooms import services
from apps.rooms.api import seen_by
from apps.rooms.models import Membership, ModerationAction, Room
from apps.users.services import is_site_moderator
from tests import factories

pytestmark = pytest.mark.django_db


def refused(code, fn, **kwargs):
    with pytest.raises(ServiceError) as err:
        fn(**kwargs)
    assert err.value.code == code, err.value.message
    return err.value


def member_of(room, user):
    return Membership.objects.get(room=room, user=user)


def test_create_makes_the_creator_owner_and_records_room_and_join_events(user, other_user):
    room = services.room_create(
        creator=user, name="  Plans ", kind="private", member_ids=[other_user.pk]
    )
    assert room.name == "Plans"
    assert member_of(room, user).role == "owner"
    assert member_of(room, other_user).role == "member"
    types = list(
        Event.objects.in_room(room).sequenced().order_by("seq").values_list("type", flat=True)
    )
    assert types == ["room.created", "member.joined", "member.joined"]
    assert room.last_seq == 3


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": ""},
        {"name": "x" * 101},
        {"name": "bad\x00"},
        {"name": "ok", "kind": "direct"},
        {"name": "ok", "member_ids": ["1"]},
        {"name": "ok", "member_ids": [10**9]},
        {"name": "ok", "member_ids": [2**64]},
        {"name": "ok", "member_ids": [-1]},
        {"name": "ok", "topic": "t" * 501},
    ],
)
def test_bad_room_input_is_refused_and_nothing_is_written(user, kwargs):
    before = Room.objects.count()
    refused("invalid", services.room_create, creator=user, **kwargs)
    assert Room.objects.count() == before


def test_member_cannot_ban_and_nothing_changes(room, user, other_user):
    third = factories.make_user()
    services.room_join(room=room, user=other_user)
    services.room_join(room=room, user=third)
    seq = Room.objects.get(pk=room.pk).last_seq
    refused("forbidden", services.member_ban, room=room, actor=other_user, user=third, reason="x")
    assert member_of(room, third).is_active
    assert Room.objects.get(pk=room.pk).last_seq == seq
    assert not ModerationAction.objects.exists()


def test_banned_user_is_removed_and_cannot_rejoin_until_unbanned(room, user, other_user):
    services.room_join(room=room, user=other_user)
    services.member_ban(room=room, actor=user, user=other_user, reason="spam")
    membership = member_of(room, other_user)
    assert not membership.is_active and membership.is_banned() and membership.ban_reason == "spam"
    refused("forbidden", services.room_join, room=room, user=other_user)
    refused("forbidden", factories.send, room=room, author=other_user)
    refused("forbidden", services.room_invite, room=room, actor=user, user=other_user)
    audit = ModerationAction.objects.get(action="ban")
    assert (audit.actor, audit.target_user, audit.reason) == (user, other_user, "spam")
    services.member_unban(room=room, actor=user, user=other_user)
    assert services.room_join(room=room, user=other_user).is_active


def test_ban_with_end_lapses_after_it(room, user, other_user):
    services.room_join(room=room, user=other_user)
    until = timezone.now() + timedelta(hours=1)
    services.member_ban(room=room, actor=user, user=other_user, until=until)
    refused("forbidden", services.room_join, room=room, user=other_user)
    Membership.objects.filter(room=room, user=other_user).update(
        banned_until=timezone.now() - timedelta(seconds=1)
    )
    assert services.room_join(room=room, user=other_user).is_active


def test_muted_member_cannot_send_edit_or_react_until_the_mute_ends(room, user, other_user):
    services.room_join(room=room, user=other_user)
    message_event = factories.send(room, other_user, "before")
    message = Message.objects.get(pk=message_event.envelope["data"]["id"])
    services.member_mute(
        room=room, actor=user, user=other_user, until=timezone.now() + timedelta(minutes=5)
    )
    refused("forbidden", factories.send, room=room, author=other_user)
    refused("forbidden", messaging.message_edit, message=message, actor=other_user, body="x")
    refused("forbidden", messaging.reaction_add, message=message, user=other_user, emoji="👍")
    services.member_mute(room=room, actor=user, user=other_user, until=None)
    assert factories.send(room, other_user, "after").type == "message.created"
    assert list(
        ModerationAction.objects.order_by("created_at").values_list("action", flat=True)
    ) == ["mute", "unmute"]


@pytest.mark.parametrize(
    "until",
    [
        timezone.now() - timedelta(minutes=1),
        "tomorrow",
        timezone.now().replace(tzinfo=None) + timedelta(days=1),
    ],
)
def test_mute_until_must_be_an_aware_future_time(room, user, other_user, until):
    services.room_join(room=room, user=other_user)
    refused("invalid", services.member_mute, room=room, actor=user, user=other_user, until=until)
    assert member_of(room, other_user).muted_until is None


def test_moderators_cannot_touch_the_owner_or_each_other_but_the_owner_can(room, user, other_user):
    mod2 = factories.make_user()
    for u in (other_user, mod2):
        services.room_join(room=room, user=u)
        services.member_set_role(room=room, actor=user, user=u, role="moderator")
    refused("forbidden", services.member_kick, room=room, actor=other_user, user=user)
    refused("forbidden", services.member_ban, room=room, actor=other_user, user=mod2)
    refused(
        "forbidden", services.member_set_role, room=room, actor=other_user, user=mod2, role="member"
    )
    refused("forbidden", services.member_kick, room=room, actor=user, user=user)
    services.member_kick(room=room, actor=user, user=mod2)
    assert not member_of(room, mod2).is_active


def test_role_must_be_owner_moderator_or_member(room, user, other_user):
    services.room_join(room=room, user=other_user)
    refused(
        "invalid", services.member_set_role, room=room, actor=user, user=other_user, role="admin"
    )
    assert member_of(room, other_user).role == "member"


def test_kicked_member_may_rejoin_a_public_room(room, user, other_user):
    services.room_join(room=room, user=other_user)
    services.member_kick(room=room, actor=user, user=other_user, reason="cool off")
    assert not member_of(room, other_user).is_active
    assert services.room_join(room=room, user=other_user).is_active


def test_private_room_is_invite_only_and_invisible_to_outsiders(user, other_user):
    room = factories.make_room(user, kind=Room.Kind.PRIVATE)
    refused("not_found", services.room_join, room=room, user=other_user)
    refused("not_found", services.get_room_or_404, room_id=room.pk, user=other_user)
    services.room_invite(room=room, actor=user, user=other_user)
    assert services.get_room_or_404(room.pk, other_user) == room


def test_direct_room_is_one_per_pair_and_cannot_be_left(user, other_user):
    room = services.direct_room_open(user=user, other=other_user)
    assert services.direct_room_open(user=other_user, other=user) == room
    assert room.kind == "direct"
    assert set(room.memberships.values_list("user", flat=True)) == {user.pk, other_user.pk}
    refused("forbidden", services.room_leave, room=room, user=user)
    refused("forbidden", services.room_invite, room=room, actor=user, user=factories.make_user())
    refused("invalid", services.direct_room_open, user=user, other=user)


def test_mark_read_moves_forward_only_and_caps_at_last_seq(room, user, other_user):
    services.room_join(room=room, user=other_user)
    for i in range(3):
        factories.send(room, user, f"m{i}")
    unread = seen_by(Room.objects, other_user).get(pk=room.pk).unread
    assert unread == 3
    event = services.mark_read(room=room, user=other_user, seq=10**6)
    last_seq = Room.objects.get(pk=room.pk).last_seq
    assert event.envelope["data"]["last_read_seq"] == last_seq and event.seq is None
    assert services.mark_read(room=room, user=other_user, seq=1) is None
    assert member_of(room, other_user).last_read_seq == last_seq
    assert seen_by(Room.objects, other_user).get(pk=room.pk).unread == 0
    refused("invalid", services.mark_read, room=room, user=other_user, seq=-1)


def test_unread_ignores_own_and_deleted_messages(room, user, other_user):
    services.room_join(room=room, user=other_user)
    factories.send(room, other_user, "mine")
    gone = factories.send(room, user, "gone")
    factories.send(room, user, "live")
    messaging.message_delete(
        message=Message.objects.get(pk=gone.envelope["data"]["id"]), actor=user
    )
    assert seen_by(Room.objects, other_user).get(pk=room.pk).unread == 1


def _archived_room_writes(room, owner, member, message):
    other, banned = factories.make_user(), factories.make_user()
    services.member_ban(room=room, actor=owner, user=banned)
    return {
        "send": lambda: factories.send(room, member),
        "edit": lambda: messaging.message_edit(message=message, actor=member, body="new"),
        "delete": lambda: messaging.message_delete(message=message, actor=owner),
        "react": lambda: messaging.reaction_add(message=message, user=member, emoji="👍"),
        "unreact": lambda: messaging.reaction_remove(message=message, user=owner, emoji="🎉"),
        "join": lambda: services.room_join(room=room, user=other),
        "leave": lambda: services.room_leave(room=room, user=member),
        "invite": lambda: services.room_invite(room=room, actor=owner, user=other),
        "role": lambda: services.member_set_role(
            room=room, actor=owner, user=member, role="moderator"
        ),
        "kick": lambda: services.member_kick(room=room, actor=owner, user=member),
        "ban": lambda: services.member_ban(room=room, actor=owner, user=member),
        "unban": lambda: services.member_unban(room=room, actor=owner, user=banned),
        "mute": lambda: services.member_mute(
            room=room, actor=owner, user=member, until=timezone.now() + timedelta(hours=1)
        ),
        "update": lambda: services.room_update(room=room, actor=owner, name="renamed"),
        "archive": lambda: services.room_archive(room=room, actor=owner),
    }


ARCHIVED_WRITES = [
    "send",
    "edit",
    "delete",
    "react",
    "unreact",
    "join",
    "leave",
    "invite",
    "role",
    "kick",
    "ban",
    "unban",
    "mute",
    "update",
    "archive",
]


@pytest.mark.parametrize("archived", [True, False], ids=["archived", "control"])
@pytest.mark.parametrize("write", ARCHIVED_WRITES)
def test_nothing_in_an_archived_room_changes(room, user, other_user, write, archived):
    """Each write is refused once the room is archived (and, as a control, works before)."""
    services.room_join(room=room, user=other_user)
    sent = factories.send(room, other_user, "kept")
    message = Message.objects.get(pk=sent.envelope["data"]["id"])
    messaging.reaction_add(message=message, user=user, emoji="🎉")
    state = lambda: (  # noqa: E731
        Room.objects.values_list("last_seq", "name").get(pk=room.pk),
        list(
            Membership.objects.in_room(room)
            .order_by("pk")
            .values_list("is_active", "role", "muted_until", "banned_at")
        ),
        list(Message.objects.in_room(room).values_list("body", "deleted_at")),
        message.reactions.count(),
    )
    writes = _archived_room_writes(room, user, other_user, message)
    assert sorted(writes) == sorted(ARCHIVED_WRITES)
    if not archived:
        before = state()
        writes[write]()
        assert state() != before
        return
    services.room_archive(room=room, actor=user)
    before = state()
    with pytest.raises(ServiceError) as err:
        writes[write]()
    assert err.value.code == "forbidden"
    assert "archived" in err.value.message
    assert state() == before


def test_staff_need_the_moderators_group_to_moderate_other_rooms(room, other_user):
    services.room_join(room=room, user=other_user)
    staff = factories.make_user(is_staff=True)
    refused("forbidden", services.member_ban, room=room, actor=staff, user=other_user)
    moderator = factories.make_moderator()
    assert is_site_moderator(moderator) and not moderator.is_superuser
    services.member_ban(room=room, actor=moderator, user=other_user, reason="site rule")
    assert member_of(room, other_user).is_banned()


def test_site_moderator_sees_private_rooms(user):
    room = factories.make_room(user, kind=Room.Kind.PRIVATE)
    assert services.get_room_or_404(room.pk, factories.make_moderator()) == room


def test_update_and_archive_are_for_owner_and_moderators(room, user, other_user):
    services.room_join(room=room, user=other_user)
    refused("forbidden", services.room_update, room=room, actor=other_user, name="mine")
    refused("forbidden", services.room_archive, room=room, actor=other_user)
    updated = services.room_update(room=room, actor=user, name="New name", topic="t")
    assert (updated.name, updated.topic) == ("New name", "t")
    last = Event.objects.in_room(room).sequenced().order_by("-seq").first()
    assert last.envelope["data"] == {"name": "New name", "topic": "t"}
