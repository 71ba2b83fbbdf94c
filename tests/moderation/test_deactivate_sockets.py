"""A deactivated account's open socket is closed with 4403 at once, before it acts again
(apps.users.rights: the change reaches every process; tests/hardening/test_ws_rights.py checks
two processes)."""

import pytest

from apps.moderation import services as moderation
from tests import factories
from tests.support.wsclient import WS

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]


def test_a_deactivated_users_socket_is_closed_with_4403(server, user, room):
    socket = WS(server.ws_url, token=factories.make_token(user))
    try:
        socket.hello()
        socket.subscribe(room.pk)
        assert socket.send_message(room.pk, body="before")["type"] == "ack"
        moderation.user_deactivate(user=user, actor=factories.make_moderator(), reason="bot")
        refused = socket.until(lambda f: f["type"] == "error")
        assert refused["code"] == "forbidden" and refused["ref"] is None
        assert socket.wait_closed() == 4403
    finally:
        socket.close()
