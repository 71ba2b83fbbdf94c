import threading
import uuid

import pytest
from django.db import close_old_connections

from apps.core.errors import ServiceError
from apps.events.models import Event
from apps.messaging import services
from apps.messaging.models import Message
from tests import factories


@pytest.mark.django_db
def test_send_records_message_and_event_with_next_seq(room, user):
    event = factories.send(room, user, "hi")
    room.refresh_from_db()
    assert event.seq == room.last_seq
    assert event.envelope["type"] == "message.created"
    assert event.envelope["data"]["body"] == "hi"
    assert Message.objects.get(pk=event.envelope["data"]["id"]).seq == event.seq


@pytest.mark.django_db
def test_resend_with_same_client_id_creates_nothing(room, user):
    client_id = uuid.uuid4()
    first = factories.send(room, user, "once", client_id=client_id)
    again = factories.send(room, user, "once", client_id=client_id)
    assert again.pk == first.pk
    assert Message.objects.filter(author=user).count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize("body", ["", "   ", "x" * 4001, "bell\x07", 42, None])
def test_bad_bodies_are_refused_and_nothing_is_written(room, user, body):
    before = Event.objects.count()
    with pytest.raises(ServiceError) as err:
        factories.send(room, user, body)
    assert err.value.code in ("invalid", "too_large")
    assert Event.objects.count() == before


@pytest.mark.django_db(transaction=True)
def test_seq_is_gapless_under_concurrent_sends_from_threads():
    owner = factories.make_user()
    room = factories.make_room(owner)
    writers = [factories.make_user() for _ in range(4)]
    from apps.rooms import services as rooms

    for writer in writers:
        rooms.room_join(room=room, user=writer)
    errors = []

    def write(author):
        try:
            for i in range(15):
                factories.send(room, author, f"{author.username} {i}")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            close_old_connections()

    threads = [threading.Thread(target=write, args=(w,)) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    seqs = list(Event.objects.filter(room=room).order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, len(seqs) + 1))
    assert Message.objects.filter(room=room).count() == 60


def _message(event):
    return Message.objects.get(pk=event.envelope["data"]["id"])


@pytest.mark.django_db
def test_only_the_author_edits_and_the_event_carries_the_new_body(room, user, other_user):
    from apps.rooms import services as rooms

    rooms.room_join(room=room, user=other_user)
    message = _message(factories.send(room, user, "draft"))
    with pytest.raises(ServiceError) as err:
        services.message_edit(message=message, actor=other_user, body="mine now")
    assert err.value.code == "forbidden"
    event = services.message_edit(message=message, actor=user, body="final")
    assert event.envelope["data"]["body"] == "final"
    assert event.envelope["data"]["edited_at"].endswith("Z")
    message.refresh_from_db()
    assert message.body == "final" and message.edited_at is not None


@pytest.mark.django_db
def test_members_cannot_delete_others_messages_moderators_can_and_it_is_audited(
    room, user, other_user
):
    from apps.rooms import services as rooms
    from apps.rooms.models import ModerationAction

    rooms.room_join(room=room, user=other_user)
    message = _message(factories.send(room, user, "owner's"))
    with pytest.raises(ServiceError) as err:
        services.message_delete(message=message, actor=other_user)
    assert err.value.code == "forbidden"
    own = _message(factories.send(room, other_user, "oops"))
    assert services.message_delete(message=own, actor=other_user).envelope["data"] == {
        "id": own.pk,
        "by_moderator": False,
        "reason": None,
    }
    event = services.message_delete(
        message=_message(factories.send(room, other_user, "rude")), actor=user, reason="rude"
    )
    assert event.envelope["data"]["by_moderator"] is True
    audit = ModerationAction.objects.get(action="delete_message")
    assert (audit.actor, audit.target_user, audit.reason) == (user, other_user, "rude")
    assert ModerationAction.objects.count() == 1


@pytest.mark.django_db
def test_one_reaction_per_user_message_and_emoji(room, user):
    message = _message(factories.send(room, user))
    added = services.reaction_add(message=message, user=user, emoji="🎉")
    assert added.envelope["data"] == {"message": message.pk, "emoji": "🎉"}
    with pytest.raises(ServiceError):
        services.reaction_add(message=message, user=user, emoji="🎉")
    services.reaction_add(message=message, user=user, emoji="👍")
    assert message.reactions.count() == 2
    services.reaction_remove(message=message, user=user, emoji="🎉")
    with pytest.raises(ServiceError):
        services.reaction_remove(message=message, user=user, emoji="🎉")
    assert list(message.reactions.values_list("emoji", flat=True)) == ["👍"]


@pytest.mark.django_db
@pytest.mark.parametrize("emoji", ["", "a b", "x" * 33, 5])
def test_bad_emoji_is_refused(room, user, emoji):
    message = _message(factories.send(room, user))
    with pytest.raises(ServiceError) as err:
        services.reaction_add(message=message, user=user, emoji=emoji)
    assert err.value.code == "invalid"
    assert not message.reactions.exists()


@pytest.mark.django_db
def test_non_members_and_banned_users_cannot_send(room, user, other_user):
    from apps.rooms import services as rooms

    with pytest.raises(ServiceError) as err:
        factories.send(room, other_user)
    assert err.value.code == "forbidden"
    rooms.room_join(room=room, user=other_user)
    rooms.member_ban(room=room, actor=user, user=other_user)
    with pytest.raises(ServiceError) as err:
        factories.send(room, other_user)
    assert err.value.code == "forbidden"
    assert not Message.objects.filter(author=other_user).exists()


@pytest.mark.django_db
def test_reply_to_must_be_a_message_of_the_same_room(room, user):
    elsewhere = factories.make_room(user)
    foreign = _message(factories.send(elsewhere, user))
    with pytest.raises(ServiceError) as err:
        factories.send(room, user, "re", reply_to=foreign.pk)
    assert err.value.code == "invalid"
    parent = _message(factories.send(room, user, "parent"))
    reply = factories.send(room, user, "re", reply_to=parent.pk)
    assert reply.envelope["data"]["reply_to"] == parent.pk


@pytest.mark.django_db
def test_resend_after_being_muted_still_returns_the_original(room, user, other_user):
    from datetime import timedelta

    from django.utils import timezone

    from apps.rooms import services as rooms

    rooms.room_join(room=room, user=other_user)
    client_id = uuid.uuid4()
    first = factories.send(room, other_user, "sent", client_id=client_id)
    rooms.member_mute(
        room=room, actor=user, user=other_user, until=timezone.now() + timedelta(hours=1)
    )
    assert factories.send(room, other_user, "sent", client_id=client_id).pk == first.pk


@pytest.mark.django_db(transaction=True)
def test_concurrent_resends_of_one_client_id_create_one_message():
    owner = factories.make_user()
    room = factories.make_room(owner)
    client_id = uuid.uuid4()
    results, errors = [], []
    barrier = threading.Barrier(4)

    def resend():
        try:
            barrier.wait(timeout=10)
            results.append(factories.send(room, owner, "once", client_id=client_id).pk)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            close_old_connections()

    threads = [threading.Thread(target=resend) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(results)) == 1 and len(results) == 4
    assert Message.objects.filter(author=owner, client_id=client_id).count() == 1
