"""The room lock against writers that lock a membership first (PostgreSQL's row locks).

Reading a room (`mark_read`) locks the reader's membership row, then inserts the receipt
event, whose foreign key to the room is checked at COMMIT with FOR KEY SHARE on the room row.
A moderator's ban, mute, kick or role change locks the room first, then updates that same
membership. With the room locked FOR UPDATE the two waited for each other: PostgreSQL broke
the deadlock by failing one of them (the likely cause of CI's failure on 3 December: a ban
from the web client did not reach the banned user's page, which marks the room read as events
arrive). The room is now locked FOR NO KEY
UPDATE, which still serialises every writer of the room but lets key checks through, and the
moderations save only the fields they change (the ban saved the whole row, writing back the
read position it had read before the receipt committed).
"""

import threading
import time
from datetime import timedelta

import pytest
from django.db import close_old_connections, connection
from django.utils import timezone

from apps.rooms import services
from apps.rooms.models import Membership
from apps.rooms.signals import room_read
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)


def _waiting_on_a_lock() -> int:
    """Sessions of this test database waiting for a row lock now."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


MODERATIONS = {
    "ban": lambda room, owner, bob: services.member_ban(room=room, actor=owner, user=bob),
    "mute": lambda room, owner, bob: services.member_mute(
        room=room, actor=owner, user=bob, until=timezone.now() + timedelta(minutes=5)
    ),
    "kick": lambda room, owner, bob: services.member_kick(room=room, actor=owner, user=bob),
    "role": lambda room, owner, bob: services.member_set_role(
        room=room, actor=owner, user=bob, role=Membership.Role.MODERATOR
    ),
}


EVENT_OF = {
    "ban": "member.banned",
    "mute": "member.muted",
    "kick": "member.left",
    "role": "member.role_changed",
}


@pytest.mark.parametrize("action", sorted(MODERATIONS))
def test_a_moderation_waits_for_a_read_receipt_in_flight_and_both_commit(action):
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's row locks")
    owner, bob = factories.make_user("owner"), factories.make_user("bob")
    room = factories.make_room(owner, members=[bob])
    factories.send(room, owner, "read me")

    reader_inside, moderation_started = threading.Event(), threading.Event()
    errors = {}

    def hold_the_membership(sender, room, user, seq, **kwargs):
        # Inside mark_read's transaction: bob's membership is locked and updated; the receipt
        # event (the room's foreign key) is inserted when this returns, then COMMIT.
        reader_inside.set()
        assert moderation_started.wait(10)
        deadline = time.monotonic() + 10
        while _waiting_on_a_lock() == 0:  # the moderation holds the room, waits for bob's row
            assert time.monotonic() < deadline, "the moderation never waited for the row"
            time.sleep(0.02)

    def run(name, fn):
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors[name] = exc
        finally:
            close_old_connections()

    room_read.connect(hold_the_membership, dispatch_uid="test_locks")
    try:
        reader = threading.Thread(
            target=run, args=("read", lambda: services.mark_read(room=room, user=bob, seq=1))
        )
        reader.start()
        assert reader_inside.wait(10)
        moderation_started.set()
        moderator = threading.Thread(
            target=run, args=(action, lambda: MODERATIONS[action](room, owner, bob))
        )
        moderator.start()
        reader.join(30)
        moderator.join(30)
    finally:
        room_read.disconnect(dispatch_uid="test_locks")
    assert not reader.is_alive() and not moderator.is_alive()
    assert errors == {}
    # The receipt's position is kept: the moderation writes only its own fields.
    assert Membership.objects.get(room=room, user=bob).last_read_seq == 1
    assert room.events.filter(type="receipt.updated").count() == 1
    last = room.events.exclude(seq=None).order_by("-seq").values_list("type", flat=True)[0]
    assert last == EVENT_OF[action]
