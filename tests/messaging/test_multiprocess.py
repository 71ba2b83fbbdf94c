"""Two server processes sharing PostgreSQL and Redis: the same room, every event, one order;
and a client whose process is killed resumes on the other with nothing lost or repeated."""

import threading

import pytest
from websockets.exceptions import ConnectionClosed

from apps.rooms import services as rooms
from apps.rooms.models import Room
from tests import factories
from tests.support.processes import ServerProcess
from tests.support.wsclient import WS

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]


def send_many(url, token, room_id, count, label, errors):
    """Send `count` messages over one socket, each waiting for its ack (run in a thread, so
    it touches no database connection of its own)."""
    client = WS(url, token=token)
    try:
        for i in range(count):
            reply = client.send_message(room_id, body=f"{label} {i}")
            if reply["type"] != "ack":
                errors.append(reply)
    except Exception as exc:  # a killed server ends its sender
        errors.append(exc)
    finally:
        client.close()


def test_two_processes_same_order_and_resume_after_sigkill(child_env, user, other_user, room):
    rooms.room_join(room=room, user=other_user)
    env = dict(child_env, CHAT_RATE_LIMIT_MESSAGES="1000", CHAT_RATE_LIMIT_PER_SECOND="1000")
    a, b = ServerProcess(env).start(), ServerProcess(env).start()
    token, other_token = factories.make_token(user), factories.make_token(other_user)
    try:
        on_a, on_b = WS(a.ws_url, token=token), WS(b.ws_url, token=token)
        on_a.subscribe(room.pk, since=0)
        on_b.subscribe(room.pk, since=0)

        # Both processes commit into the room at once: each sees the other's events through
        # Redis, possibly out of order, and must still deliver them in seq order.
        errors = []
        senders = [
            threading.Thread(target=send_many, args=(a.ws_url, token, room.pk, 25, "a", errors)),
            threading.Thread(
                target=send_many, args=(b.ws_url, other_token, room.pk, 25, "b", errors)
            ),
        ]
        for thread in senders:
            thread.start()
        for thread in senders:
            thread.join(120)
        assert errors == []
        head = Room.objects.get(pk=room.pk).last_seq
        on_a.wait_seq(room.pk, head)
        on_b.wait_seq(room.pk, head)
        assert on_a.seqs(room.pk) == on_b.seqs(room.pk) == list(range(1, head + 1))
        assert [e["id"] for e in on_a.events(room.pk)] == [e["id"] for e in on_b.events(room.pk)]

        # B keeps committing while A is killed outright; A's client moves to B and resumes.
        later = threading.Thread(
            target=send_many, args=(b.ws_url, other_token, room.pk, 30, "later", errors)
        )
        later.start()
        on_a.wait_seq(room.pk, head + 5)
        a.kill()
        with pytest.raises((ConnectionClosed, OSError)):
            while True:
                on_a.recv(timeout=10)
        seen = on_a.seqs(room.pk)
        moved = WS(b.ws_url, token=token)
        moved.subscribe(room.pk, since=seen[-1])
        later.join(120)
        assert errors == []
        final = Room.objects.get(pk=room.pk).last_seq
        assert final == head + 30
        moved.wait_seq(room.pk, final)
        on_b.wait_seq(room.pk, final)
        assert seen + moved.seqs(room.pk) == list(range(1, final + 1))
        assert on_b.seqs(room.pk) == list(range(1, final + 1))
        for client in (moved, on_b):
            client.close()
    finally:
        a.stop()
        b.stop()
        wait_for_other_sessions_to_end()


def wait_for_other_sessions_to_end(timeout=10.0):
    """A killed server's database sessions end a moment after it: wait, so the test database
    can be dropped at the end of the run."""
    import time

    from django.db import connection

    deadline = time.monotonic() + timeout
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            if cursor.fetchone()[0] == 0:
                return
            time.sleep(0.1)
