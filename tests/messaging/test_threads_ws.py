"""thread.updated over real sockets (a daphne ServerProcess, PostgreSQL and Redis)."""

import pytest

from apps.messaging.models import Message
from apps.rooms import services as rooms
from tests import factories

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]


def test_thread_updated_reaches_the_rooms_subscribers_after_the_reply(
    start_server, user, other_user, room
):
    rooms.room_join(room=room, user=other_user)
    outsider = factories.make_user()
    server = start_server()
    replier, watcher, elsewhere = server.open(other_user), server.open(user), server.open(outsider)
    root = factories.send(room, user, "root").envelope["data"]["id"]
    for client in (replier, watcher):
        client.subscribe(room.pk)
    elsewhere.subscribe(factories.make_room(outsider).pk)

    ack = replier.send_message(room.pk, "a reply", reply_to=root)
    assert ack["type"] == "ack" and ack["event"]["data"]["thread"] == root
    updated = watcher.until(lambda f: f["type"] == "thread.updated")
    assert updated["data"] == {
        "root": root,
        "reply_count": 1,
        "last_reply_seq": ack["event"]["seq"],
    }
    assert updated["room"] == room.pk and updated["seq"] is None
    assert updated["actor"]["id"] == other_user.pk
    # The reply's message.created came first: a client counts what it already shows.
    kinds = [
        f["type"] for f in watcher.frames if f["type"] in ("message.created", "thread.updated")
    ]
    assert kinds == ["message.created", "thread.updated"]
    replier.seen(lambda f: f["type"] == "thread.updated")

    # Deleting the reply recounts, live too.
    reply_id = ack["event"]["data"]["id"]
    assert replier.request("message.delete", message=reply_id)["type"] == "ack"
    recounted = watcher.until(
        lambda f: f["type"] == "thread.updated" and f["data"]["reply_count"] == 0
    )
    assert recounted["data"] == {"root": root, "reply_count": 0, "last_reply_seq": None}
    assert Message.objects.get(pk=root).reply_count == 0
    # Nobody outside the room hears of it.
    assert elsewhere.request("ping")["type"] == "pong"
    assert not any(f["type"] == "thread.updated" for f in elsewhere.frames)
