import threading
import uuid

import pytest
from django.db import close_old_connections

from apps.events.models import Event
from apps.messaging import services
from apps.messaging.models import Message
from chatproject.errors import ServiceError
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
@pytest.mark.services
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
