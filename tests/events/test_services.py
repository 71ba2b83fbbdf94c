"""apps.events.services: seqs handed out under the room lock, and the one after-commit helper.
Runs on both databases (bin/test runs it again with CHAT_EMBEDDED=1)."""

import pytest
from django.db import transaction

from apps.events import catalogue as ev
from apps.events.models import Event
from apps.events.services import after_commit, allocate_seqs, record_event
from apps.rooms.models import Room
from tests import factories

pytestmark = pytest.mark.django_db


def test_allocate_seqs_hands_out_consecutive_seqs_after_last_seq(room):
    room.refresh_from_db()
    before = room.last_seq
    with transaction.atomic():
        assert allocate_seqs({room.pk: 3}) == {room.pk: before + 1}
        assert allocate_seqs({room.pk: 1}) == {room.pk: before + 4}
    room.refresh_from_db()
    assert room.last_seq == before + 4


def test_allocate_seqs_for_a_missing_room_fails_and_changes_nothing(room):
    room.refresh_from_db()
    with pytest.raises(Room.DoesNotExist), transaction.atomic():
        allocate_seqs({room.pk: 1, 999_999_999: 1})
    assert Room.objects.get(pk=room.pk).last_seq == room.last_seq


def test_record_event_takes_the_next_seq_of_the_room_and_the_log_stays_gapless(room, user):
    first = factories.send(room, user, "one")
    with transaction.atomic():
        locked = Room.objects.select_for_update().get(pk=room.pk)
        event = record_event(
            type="room.updated", room=locked, actor=user, data=ev.room_updated({"topic": "t"})
        )
    assert event.seq == first.seq + 1 == locked.last_seq
    assert factories.send(room, user, "two").seq == first.seq + 2
    seqs = list(Event.objects.filter(room=room).order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, len(seqs) + 1))


def test_after_commit_waits_for_the_commit(django_capture_on_commit_callbacks):
    ran = []
    with django_capture_on_commit_callbacks(execute=True) as callbacks, transaction.atomic():
        after_commit(lambda: ran.append("effect"))
        assert ran == []
    assert ran == ["effect"] and len(callbacks) == 1


def test_after_commit_runs_nothing_for_a_transaction_that_rolls_back(
    django_capture_on_commit_callbacks,
):
    ran = []
    with (
        django_capture_on_commit_callbacks(execute=True) as callbacks,
        pytest.raises(RuntimeError),
        transaction.atomic(),
    ):
        after_commit(lambda: ran.append("effect"))
        raise RuntimeError("rolled back")
    assert ran == [] and callbacks == []


@pytest.mark.django_db(transaction=True)
def test_after_commit_outside_a_transaction_runs_at_once_and_a_failure_is_only_logged(caplog):
    ran = []
    after_commit(lambda: ran.append("now"))
    assert ran == ["now"]

    def broken():
        raise ValueError("Redis is down")

    after_commit(broken)  # does not raise: what it follows is committed already
    assert "after-commit effect" in caplog.text and "Redis is down" in caplog.text
