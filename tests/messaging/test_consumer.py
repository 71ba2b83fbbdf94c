"""The WebSocket consumer over real sockets: a daphne ServerProcess, PostgreSQL and Redis."""

import uuid

import pytest
from websockets.exceptions import InvalidStatus

from apps.messaging import services as messaging
from apps.rooms import services as rooms
from apps.rooms.models import Room
from tests import factories
from tests.messaging.wsclient import WS

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def ws(server):
    sockets = []

    def open_socket(user=None, **kwargs):
        token = factories.make_token(user) if user is not None else None
        client = WS(server.ws_url, token=token, **kwargs)
        sockets.append(client)
        return client

    yield open_socket
    for client in sockets:
        client.close()


def test_hello_then_subscribe_replays_since_and_goes_live(ws, user, room):
    for i in range(3):
        factories.send(room, user, body=f"old {i}")
    client = ws(user)
    hello = client.hello()
    assert hello["user"] == {"id": user.pk, "username": user.username}
    assert hello["heartbeat"] > 0
    head = Room.objects.get(pk=room.pk).last_seq

    subscribed = client.subscribe(room.pk, since=head - 2)
    assert subscribed == {"type": "subscribed", "ref": subscribed["ref"], "room": room.pk,
                          "last_seq": head, "truncated": False, "head": head}
    assert client.seqs(room.pk) == [head - 1, head]

    factories.send(room, user, body="live")
    client.wait_seq(room.pk, head + 1)
    live = client.events(room.pk)[-1]
    assert live["type"] == "message.created" and live["data"]["body"] == "live"
    assert client.seqs(room.pk) == [head - 1, head, head + 1]
