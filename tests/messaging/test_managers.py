"""apps/messaging/managers.py: the message querysets and the unread count, on the real
database."""

import pytest

from apps.messaging import services as messaging
from apps.messaging.models import Message, Reaction
from apps.rooms import services as rooms
from apps.rooms.models import Room
from tests import factories

pytestmark = pytest.mark.django_db


def unread(room, user) -> int:
    return (
        Room.objects.with_membership_of(user)
        .annotate(unread=Message.objects.unread_count(user))
        .get(pk=room.pk)
        .unread
    )


def message(event) -> Message:
    return Message.objects.get(pk=event.envelope["data"]["id"])


def test_in_room_visible_before_and_newest_first(room, user):
    other_room = factories.make_room(user)
    sent = [message(factories.send(room, user, f"m{i}")) for i in range(4)]
    factories.send(other_room, user, "elsewhere")
    messaging.message_delete(message=sent[1], actor=user)
    in_room = Message.objects.in_room(room)
    assert list(in_room.newest_first().values_list("pk", flat=True)) == [m.pk for m in sent[::-1]]
    assert [m.pk for m in in_room.visible().order_by("seq")] == [sent[0].pk, sent[2].pk, sent[3].pk]
    assert [m.pk for m in in_room.before(sent[2].seq).order_by("seq")] == [sent[0].pk, sent[1].pk]
    assert in_room.before(None).count() == 4


def test_unread_counts_live_messages_of_others_past_the_read_position(room, user, other_user):
    rooms.room_join(room=room, user=other_user)
    assert unread(room, other_user) == 0
    factories.send(room, other_user, "my own")
    first = message(factories.send(room, user, "one"))
    gone = message(factories.send(room, user, "two"))
    factories.send(room, user, "three")
    assert unread(room, other_user) == 3
    messaging.message_delete(message=gone, actor=user)
    assert unread(room, other_user) == 2
    rooms.mark_read(room=room, user=other_user, seq=first.seq)
    assert unread(room, other_user) == 1


def test_unread_is_zero_for_someone_who_is_not_a_member(room, user):
    factories.send(room, user, "hello")
    assert unread(room, factories.make_user()) == 0


def test_reactions_on_one_message(room, user, other_user):
    rooms.room_join(room=room, user=other_user)
    first = message(factories.send(room, user, "first"))
    second = message(factories.send(room, user, "second"))
    messaging.reaction_add(message=first, user=other_user, emoji="👍")
    messaging.reaction_add(message=second, user=user, emoji="🎉")
    assert list(Reaction.objects.on_message(first).values_list("emoji", flat=True)) == ["👍"]
