"""apps/rooms/managers.py: the room querysets (the view and read rules, membership
annotations) and the membership querysets, on the real database."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import AnonymousUser
from django.utils import timezone

from apps.rooms import services
from apps.rooms.models import Membership, Room
from tests import factories

pytestmark = pytest.mark.django_db


def ids(rooms):
    return set(rooms.values_list("pk", flat=True))


@pytest.fixture
def rooms(user):
    """A public and a private room of `user`, and a private room of someone else."""
    return {
        "public": factories.make_room(user, kind=Room.Kind.PUBLIC),
        "private": factories.make_room(user, kind=Room.Kind.PRIVATE),
        "elsewhere": factories.make_room(kind=Room.Kind.PRIVATE),
    }


def test_visible_to_is_public_rooms_and_the_private_ones_you_belong_to(rooms, user, other_user):
    mine = {rooms["public"].pk, rooms["private"].pk}
    assert ids(Room.objects.visible_to(user)) & {r.pk for r in rooms.values()} == mine
    assert rooms["public"].pk in ids(Room.objects.visible_to(other_user))
    assert not ids(Room.objects.visible_to(other_user)) & {
        rooms["private"].pk,
        rooms["elsewhere"].pk,
    }
    assert not Room.objects.visible_to(AnonymousUser()).exists()
    assert not Room.objects.visible_to(None).exists()


def test_site_moderators_see_every_room(rooms):
    moderator = factories.make_moderator()
    assert {r.pk for r in rooms.values()} <= ids(Room.objects.visible_to(moderator))


def test_readable_by_leaves_out_rooms_you_are_banned_from(rooms, user, other_user):
    public = rooms["public"]
    services.room_join(room=public, user=other_user)
    assert public.pk in ids(Room.objects.readable_by(other_user))
    services.member_ban(room=public, actor=user, user=other_user, reason="spam")
    assert public.pk in ids(Room.objects.visible_to(other_user))  # listed: it is public
    assert public.pk not in ids(Room.objects.readable_by(other_user))


def test_joined_by_and_active(rooms, user, other_user):
    services.room_join(room=rooms["public"], user=other_user)
    assert ids(Room.objects.joined_by(other_user)) == {rooms["public"].pk}
    services.room_leave(room=rooms["public"], user=other_user)
    assert not Room.objects.joined_by(other_user).exists()
    services.room_archive(room=rooms["private"], actor=user)
    active = ids(Room.objects.active())
    assert rooms["public"].pk in active and rooms["private"].pk not in active


def test_with_membership_of_annotates_role_read_position_and_mute(rooms, user, other_user):
    public = rooms["public"]
    services.room_join(room=public, user=other_user)
    until = timezone.now() + timedelta(hours=1)
    services.member_mute(room=public, actor=user, user=other_user, until=until)
    factories.send(public, user, "one")
    services.mark_read(room=public, user=other_user, seq=1)
    seen = Room.objects.with_membership_of(other_user).get(pk=public.pk)
    assert (seen.my_role, seen.my_last_read_seq) == ("member", 1)
    assert abs((seen.my_muted_until - until).total_seconds()) < 1
    owner = Room.objects.with_membership_of(user).get(pk=public.pk)
    assert owner.my_role == "owner" and owner.my_muted_until is None
    stranger = Room.objects.with_membership_of(factories.make_user()).get(pk=public.pk)
    assert (stranger.my_role, stranger.my_last_read_seq) == (None, None)


def test_membership_querysets(rooms, user, other_user):
    public = rooms["public"]
    services.room_join(room=public, user=other_user)
    third = factories.make_user()
    services.room_join(room=public, user=third)
    assert set(Membership.objects.in_room(public).active().values_list("user", flat=True)) == {
        user.pk,
        other_user.pk,
        third.pk,
    }
    assert set(Membership.objects.for_user(other_user).values_list("room", flat=True)) == {
        public.pk
    }
    services.member_ban(room=public, actor=user, user=other_user)
    services.member_ban(
        room=public, actor=user, user=third, until=timezone.now() + timedelta(minutes=5)
    )
    banned = Membership.objects.in_room(public).banned()
    assert set(banned.values_list("user", flat=True)) == {other_user.pk, third.pk}
    # A ban that has ended is no longer a ban.
    Membership.objects.filter(room=public, user=third).update(
        banned_until=timezone.now() - timedelta(seconds=1)
    )
    assert set(Membership.objects.in_room(public).banned().values_list("user", flat=True)) == {
        other_user.pk
    }
    assert (
        not Membership.objects.in_room(public)
        .active()
        .filter(user__in=[other_user, third])
        .exists()
    )
