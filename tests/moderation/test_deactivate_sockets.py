"""A deactivated account's open socket is refused at its next action and closed with 4403.

(Closing idle sockets at once, on every process, when `is_active` changes is the ws-hardening
branch's signal; this checks what holds without it.)"""

import pytest

from apps.moderation import services as moderation
from tests import factories
from tests.messaging.wsclient import WS

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]


def test_a_deactivated_users_socket_is_closed_with_4403(server, user, room):
    socket = WS(server.ws_url, token=factories.make_token(user))
    try:
        socket.hello()
        socket.subscribe(room.pk)
        assert socket.send_message(room.pk, body="before")["type"] == "ack"
        moderation.user_deactivate(user=user, actor=factories.make_moderator(), reason="bot")
        socket.send(type="message.edit", message=1, body="after", ref="late")
        refused = socket.until(lambda f: f.get("ref") == "late")
        assert refused["type"] == "error" and refused["code"] == "forbidden"
        assert socket.wait_closed() == 4403
    finally:
        socket.close()
