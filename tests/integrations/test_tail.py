"""The deliverer's log tail (apps.integrations.tail) against the real event log: each event read
once for every webhook, and the log as it is now (a deletion seen, an old read refreshed)."""

from __future__ import annotations

import json

import pytest

from apps.integrations import tail as tails
from apps.messaging import services as messaging
from apps.messaging.models import Message
from tests import factories

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture
def room():
    owner = factories.make_user()
    room = factories.make_room(owner)
    room.owner_for_tests = owner
    return room


def _send(room, count, prefix="m"):
    events = [factories.send(room, room.owner_for_tests, f"{prefix}{i}") for i in range(count)]
    room.refresh_from_db()
    return events


def _bodies(texts):
    return [json.loads(t)["data"].get("body") for t in texts]


class Reads:
    def __init__(self):
        self.count = self.rows = 0

    def __call__(self, raw, rows):
        self.count += 1
        self.rows += rows


def test_overlapping_wants_are_read_once_and_then_only_what_is_new(room):
    start = room.last_seq
    _send(room, 5)
    reads = Reads()
    tail = tails.LogTail(reads)
    # Two webhooks at different places in the same room: one statement for both.
    tail.fill({room.pk: [(start, room.last_seq), (start + 3, room.last_seq)]}, {room.pk: start})
    assert reads.count == 1
    assert _bodies(tail.events(room.pk, start, room.last_seq, None)) == [f"m{i}" for i in range(5)]
    assert _bodies(tail.events(room.pk, start + 3, room.last_seq, None)) == ["m3", "m4"]
    head = room.last_seq
    _send(room, 2, "n")
    # Nothing new wanted: nothing read.
    tail.fill({room.pk: [(start + 3, head)]}, {room.pk: start + 3})
    assert reads.count == 1
    # New events: only they are read (one statement), and what every cursor passed is gone.
    tail.fill({room.pk: [(start + 3, room.last_seq)]}, {room.pk: start + 3})
    assert reads.count == 2
    held = tail.rooms[room.pk]
    assert held.seqs == list(range(start + 4, room.last_seq + 1))
    assert _bodies(tail.events(room.pk, start + 3, room.last_seq, None)) == ["m3", "m4", "n0", "n1"]
    assert tail.events(room.pk, start + 3, room.last_seq, {"message.edited"}) == []
    # No cursor behind any more: the room is dropped.
    tail.fill({}, {})
    assert room.pk not in tail.rooms


def test_a_deletion_makes_the_room_read_again_as_the_log_holds_it(room):
    start = room.last_seq
    sent = _send(room, 3)
    reads = Reads()
    tail = tails.LogTail(reads)
    tail.fill({room.pk: [(start, room.last_seq)]}, {room.pk: start})
    assert _bodies(tail.events(room.pk, start, room.last_seq, None)) == ["m0", "m1", "m2"]
    messaging.message_delete(
        message=Message.objects.get(pk=sent[1].envelope["data"]["id"]),
        actor=room.owner_for_tests,
    )
    room.refresh_from_db()
    # The extension holds the message.deleted: the whole tail is read again (a second read).
    tail.fill({room.pk: [(start, room.last_seq)]}, {room.pk: start})
    assert reads.count == 3
    texts = tail.events(room.pk, start, room.last_seq, {"message.created"})
    assert _bodies(texts) == ["m0", None, "m2"]
    assert json.loads(texts[1])["data"]["redacted"] is True


def test_a_tail_older_than_tail_seconds_is_read_again(room, monkeypatch):
    start = room.last_seq
    sent = _send(room, 2)
    reads = Reads()
    tail = tails.LogTail(reads)
    tail.fill({room.pk: [(start, room.last_seq)]}, {room.pk: start})
    # Rewritten in place without a new event in this room (as an erasure renames a user).
    from apps.events.models import Event

    event = Event.objects.get(pk=sent[0].envelope["id"])
    event.envelope = {**event.envelope, "data": {**event.envelope["data"], "body": "rewritten"}}
    event.save(update_fields=["envelope"])
    tail.fill({room.pk: [(start, room.last_seq)]}, {room.pk: start})
    assert reads.count == 1  # fresh enough: served as read
    assert _bodies(tail.events(room.pk, start, room.last_seq, None)) == ["m0", "m1"]
    monkeypatch.setattr(tails, "TAIL_SECONDS", 0.0)
    tail.fill({room.pk: [(start, room.last_seq)]}, {room.pk: start})
    assert reads.count == 2
    assert _bodies(tail.events(room.pk, start, room.last_seq, None)) == ["rewritten", "m1"]


def test_a_cursor_far_behind_reads_its_own_range_not_all_up_to_the_head(room, monkeypatch):
    monkeypatch.setattr(tails, "TAIL_MAX", 3)
    start = room.last_seq
    _send(room, 6)
    reads = Reads()
    tail = tails.LogTail(reads)
    # One cursor far behind (more than TAIL_MAX below the newest wanted), one near the head:
    # one statement reads the two ranges, not the events between them.
    tail.fill({room.pk: [(start, start + 2), (start + 4, start + 6)]}, {room.pk: start})
    assert reads.count == 1
    assert tail.rooms[room.pk].seqs == [start + 5, start + 6]
    assert tail.far[room.pk].seqs == [start + 1, start + 2]
    assert _bodies(tail.events(room.pk, start, start + 2, None)) == ["m0", "m1"]
    assert _bodies(tail.events(room.pk, start + 4, start + 6, None)) == ["m4", "m5"]
    # The far read is not kept; what every cursor has passed is dropped.
    tail.fill({}, {room.pk: start + 5})
    assert tail.far == {} and tail.rooms[room.pk].seqs == [start + 6]


def test_a_cursor_back_from_a_retry_wait_reads_only_what_the_tail_lacks_below(room):
    start = room.last_seq
    _send(room, 6)
    reads = Reads()
    tail = tails.LogTail(reads)
    tail.fill({room.pk: [(start + 3, room.last_seq)]}, {room.pk: start + 3})
    assert reads.rows == 3
    # A webhook whose cursor waited for a retry (so it held nothing back) wants (start + 1, …]:
    # only the two events below the tail are read, and the tail holds them too.
    tail.fill(
        {room.pk: [(start + 1, room.last_seq), (start + 3, room.last_seq)]}, {room.pk: start + 1}
    )
    assert (reads.count, reads.rows) == (2, 5)
    assert tail.rooms[room.pk].seqs == list(range(start + 2, room.last_seq + 1))
    assert _bodies(tail.events(room.pk, start + 1, room.last_seq, None)) == [
        f"m{i}" for i in range(1, 6)
    ]
