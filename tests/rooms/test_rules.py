"""The room rules (apps/rooms/services.py): one rule per action, and the moderation edges."""

import pytest

from apps.events.models import Event
from apps.rooms import services
from apps.rooms.models import Membership, ModerationAction, Room
from tests import factories
from tests.rooms.test_services import refused

pytestmark = pytest.mark.django_db


def last_event(room):
    return Event.objects.filter(room=room).order_by("-seq").first()


def people(owner, room):
    """One user in each relation to the room, by name."""
    member, left, banned, stranger = (factories.make_user() for _ in range(4))
    for user in (member, left, banned):
        if room.kind == Room.Kind.PUBLIC:
            services.room_join(room=room, user=user)
        else:
            services.room_invite(room=room, actor=owner, user=user)
    services.room_leave(room=room, user=left)
    services.member_ban(room=room, actor=owner, user=banned, reason="spam")
    return {
        "owner": owner,
        "member": member,
        "left": left,
        "banned": banned,
        "stranger": stranger,
        "staff": factories.make_user(is_staff=True),
        "site moderator": factories.make_moderator(),
    }


@pytest.mark.parametrize("kind", [Room.Kind.PUBLIC, Room.Kind.PRIVATE])
def test_the_list_and_the_check_apply_one_view_rule(user, kind):
    """A site moderator can open a private room and sees it listed; everyone else sees a
    private room only while a member. The queryset and the in-memory form agree."""
    room = factories.make_room(user, kind=kind)
    expected = {
        "owner": True,
        "member": True,
        "left": kind == "public",
        "banned": kind == "public",
        "stranger": kind == "public",
        "staff": kind == "public",
        "site moderator": True,
    }
    for name, person in people(user, room).items():
        listed = Room.objects.visible_to(person).filter(pk=room.pk).exists()
        in_memory = services.room_visible(room, person, services.get_membership(room, person))
        assert listed == in_memory == services.can_view(room, person) == expected[name], name
        readable = Room.objects.readable_by(person).filter(pk=room.pk).exists()
        assert readable == (expected[name] and name != "banned"), name
        api = factories.api_client(person)
        in_list = room.pk in [r["id"] for r in api.get("/api/rooms/?limit=200").json()["results"]]
        opened = api.get(f"/api/rooms/{room.pk}/").status_code
        assert (in_list, opened) == ((True, 200) if expected[name] else (False, 404)), name


def test_only_owners_and_site_moderators_archive(room, user, other_user):
    services.room_join(room=room, user=other_user)
    services.member_set_role(room=room, actor=user, user=other_user, role="moderator")
    refused("forbidden", services.room_archive, room=room, actor=other_user)
    assert not Room.objects.get(pk=room.pk).is_archived
    services.room_archive(room=room, actor=factories.make_moderator(), reason="dead room")
    assert Room.objects.get(pk=room.pk).is_archived
    other = factories.make_room(user)
    services.room_archive(room=other, actor=user)
    assert Room.objects.get(pk=other.pk).is_archived


def test_the_last_owner_hands_ownership_on_before_leaving(room, user, other_user):
    services.room_join(room=room, user=other_user)
    error = refused("forbidden", services.room_leave, room=room, user=user)
    assert "last owner" in error.message
    moderator = factories.make_moderator()
    refused("forbidden", services.member_kick, room=room, actor=moderator, user=user)
    refused("forbidden", services.member_ban, room=room, actor=moderator, user=user)
    refused(
        "forbidden", services.member_set_role, room=room, actor=moderator, user=user, role="member"
    )
    # A moderator is not an owner: only an owner makes owners.
    services.member_set_role(room=room, actor=user, user=other_user, role="moderator")
    refused(
        "forbidden",
        services.member_set_role,
        room=room,
        actor=other_user,
        user=other_user,
        role="owner",
    )
    services.member_set_role(room=room, actor=user, user=other_user, role="owner")
    assert last_event(room).envelope["data"]["role"] == "owner"
    services.room_leave(room=room, user=user)
    # Coming back after leaving makes a plain member (the room kept its owner).
    assert services.room_join(room=room, user=user).role == Membership.Role.MEMBER
    assert Membership.objects.get(room=room, user=other_user).role == Membership.Role.OWNER


def test_nobody_is_kicked_out_of_a_direct_room(user, other_user):
    direct = services.direct_room_open(user=user, other=other_user)
    for actor in (factories.make_moderator(), user):
        refused("forbidden", services.member_kick, room=direct, actor=actor, user=other_user)
    assert Membership.objects.get(room=direct, user=other_user).is_active


def test_a_member_removed_from_a_direct_room_before_gets_back_by_opening_it(user, other_user):
    direct = services.direct_room_open(user=user, other=other_user)
    Membership.objects.filter(room=direct, user=other_user).update(is_active=False)  # old kick
    again = services.direct_room_open(user=other_user, other=user)
    assert again.pk == direct.pk
    assert Membership.objects.get(room=direct, user=other_user).is_active
    assert last_event(direct).type == "member.joined"


def test_unban_is_an_event_for_the_room_and_the_user_and_is_logged(room, user, other_user):
    services.room_join(room=room, user=other_user)
    services.member_ban(room=room, actor=user, user=other_user, reason="spam")
    services.member_unban(room=room, actor=user, user=other_user, reason="appeal accepted")
    event = last_event(room)
    assert event.type == "member.unbanned"
    assert event.envelope["data"] == {
        "user": {"id": other_user.pk, "username": other_user.username},
        "reason": "appeal accepted",
    }
    from apps.events.fanout import targets

    assert targets(event.envelope) == ([room.pk], [other_user.pk])
    logged = ModerationAction.objects.filter(room=room).order_by("-created_at", "-pk").first()
    assert (logged.action, logged.reason, logged.target_user_id) == (
        "unban",
        "appeal accepted",
        other_user.pk,
    )


def test_kick_and_mute_reasons_reach_the_events_and_the_log(room, user, other_user):
    from datetime import timedelta

    from django.utils import timezone

    services.room_join(room=room, user=other_user)
    services.member_mute(
        room=room,
        actor=user,
        user=other_user,
        reason="calm down",
        until=timezone.now() + timedelta(minutes=5),
    )
    assert last_event(room).envelope["data"]["reason"] == "calm down"
    services.member_kick(room=room, actor=user, user=other_user, reason="flooding")
    assert last_event(room).envelope["data"]["reason"] == "flooding"
    services.room_join(room=room, user=other_user)
    services.room_leave(room=room, user=other_user)
    assert last_event(room).envelope["data"]["reason"] is None  # left by themselves
    assert set(ModerationAction.objects.filter(room=room).values_list("action", "reason")) == {
        ("mute", "calm down"),
        ("kick", "flooding"),
    }


def test_members_private_fields_only_to_themselves_and_moderators(room, user, other_user):
    third = factories.make_user()
    for person in (other_user, third):
        services.room_join(room=room, user=person)
    private = {"is_active", "muted_until", "banned", "banned_until", "ban_reason", "last_read_seq"}

    def listed(viewer):
        rows = factories.api_client(viewer).get(f"/api/rooms/{room.pk}/members/").json()
        return {row["user"]["id"]: set(row) for row in rows["results"]}

    for viewer in (user, factories.make_moderator()):
        assert all(private <= fields for fields in listed(viewer).values())
    seen = listed(other_user)
    assert private <= seen[other_user.pk]
    assert seen[user.pk] == seen[third.pk] == {"user", "role", "joined_at"}
    stranger = listed(factories.make_user())
    assert all(fields == {"user", "role", "joined_at"} for fields in stranger.values())


def test_ban_and_unban_reasons_over_rest(room, user, other_user):
    services.room_join(room=room, user=other_user)
    api = factories.api_client(user)
    base = f"/api/rooms/{room.pk}/members/{other_user.pk}"
    assert api.post(f"{base}/ban/", {"reason": "spam"}, format="json").status_code == 200
    assert last_event(room).envelope["data"]["reason"] == "spam"
    assert api.post(f"{base}/unban/", {"reason": "sorry"}, format="json").status_code == 200
    assert last_event(room).envelope["data"] == {
        "user": {"id": other_user.pk, "username": other_user.username},
        "reason": "sorry",
    }
