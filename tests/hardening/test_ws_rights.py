"""Open sockets follow the user's rights as they change (issue 12, findings 3 and 10): on two
server processes sharing PostgreSQL and Redis, a demoted site moderator loses the private rooms
it followed, a deactivated account's sockets close with 4403, a password change closes them with
4401 and rotates the API token."""

from __future__ import annotations

import time
from importlib import import_module

import pytest
from django.apps import apps
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from apps.rooms.models import Room
from tests import factories
from tests.support.processes import ServerProcess
from tests.support.wsclient import WS

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

WITHIN = 1.0  # seconds from the committed change to every socket on every process


@pytest.fixture
def two_servers(child_env):
    # The periodic Redis comparison is off (an hour): what arrives within the second is the
    # channel-layer message itself.
    env = dict(child_env, CHAT_RIGHTS_CHECK_SECONDS="3600")
    a, b = ServerProcess(env).start(), ServerProcess(env).start()
    yield a, b
    a.stop()
    b.stop()


def _timed(client, predicate, started):
    frame = client.until(predicate, timeout=10)
    return frame, time.monotonic() - started


def _moderators():
    return import_module("apps.rooms.migrations.0003_moderators_group").ensure_group(apps)


def test_a_demoted_site_moderator_loses_private_rooms_on_both_processes(two_servers):
    a, b = two_servers
    owner = factories.make_user()
    private = factories.make_room(owner, kind=Room.Kind.PRIVATE)
    moderator = factories.make_moderator()
    token = factories.make_token(moderator)
    clients = [WS(a.ws_url, token=token), WS(b.ws_url, token=token)]
    for client in clients:
        assert client.subscribe(private.pk, since=0)["type"] == "subscribed"

    # Out of the Moderators group (an m2m change): the private room goes, on both processes.
    started = time.monotonic()
    moderator.groups.remove(_moderators())
    for client in clients:
        frame, took = _timed(client, lambda f: f["type"] == "unsubscribed", started)
        assert frame == {
            "type": "unsubscribed",
            "ref": None,
            "room": private.pk,
            "reason": "forbidden",
        }
        assert took < WITHIN, took
        again = client.request("subscribe", room=private.pk, since=0)
        assert again["type"] == "error" and again["code"] == "not_found", again
        # A private room created after the demotion is as invisible.
        later = factories.make_room(owner, kind=Room.Kind.PRIVATE)
        refused = client.request("subscribe", room=later.pk, since=0)
        assert refused["code"] == "not_found", refused

    # Back in the group it may follow the room again; then staff status goes (a field change).
    moderator.groups.add(_moderators())
    time.sleep(0.3)
    for client in clients:
        assert client.subscribe(private.pk, since=0)["type"] == "subscribed"
    started = time.monotonic()
    moderator.is_staff = False
    moderator.save()
    for client in clients:
        frame, took = _timed(client, lambda f: f["type"] == "unsubscribed", started)
        assert frame["room"] == private.pk and frame["reason"] == "forbidden"
        assert took < WITHIN, took
        # Public rooms stay, and the socket stays open.
        assert client.request("ping")["type"] == "pong"
    for client in clients:
        client.close()


def test_deactivation_closes_every_socket_on_both_processes(two_servers):
    a, b = two_servers
    user, erased = factories.make_user(), factories.make_user()
    room = factories.make_room(user)
    clients = {}
    for who in (user, erased):
        token = factories.make_token(who)
        clients[who.pk] = [WS(a.ws_url, token=token), WS(b.ws_url, token=token)]
        for client in clients[who.pk]:
            client.subscribe(room.pk)

    started = time.monotonic()
    user.is_active = False
    user.save(update_fields=["is_active"])
    # Another service asks for its own close code (account erasure: 4401).
    erased._close_code = 4401
    erased.is_active = False
    erased.save()
    for who, code in ((user, 4403), (erased, 4401)):
        for client in clients[who.pk]:
            error = client.until(lambda f: f["type"] == "error", timeout=10)
            assert error["ref"] is None
            assert error["code"] == ("forbidden" if code == 4403 else "unauthenticated")
            assert client.wait_closed(timeout=5) == code
            assert time.monotonic() - started < WITHIN + 0.5  # both users, four sockets


def test_a_password_change_closes_old_sockets_with_4401_and_rotates_the_token(two_servers):
    a, b = two_servers
    user = factories.make_user()
    room = factories.make_room(user)
    old_token = factories.make_token(user)
    clients = [WS(a.ws_url, token=old_token), WS(b.ws_url, token=old_token)]
    for client in clients:
        client.subscribe(room.pk)

    started = time.monotonic()
    user.set_password("a-new-password-42")
    user.save()
    for client in clients:
        error = client.until(lambda f: f["type"] == "error", timeout=10)
        assert error["code"] == "unauthenticated" and error["ref"] is None
        assert client.wait_closed(timeout=5) == 4401
    assert time.monotonic() - started < WITHIN + 0.5

    # The old token is dead on REST and on the WebSocket; the rotated one works.
    new_token = Token.objects.get(user=user).key
    assert new_token != old_token
    rest = APIClient()
    rest.credentials(HTTP_AUTHORIZATION=f"Token {old_token}")
    assert rest.get("/api/me/").status_code == 401
    refused = WS(a.ws_url, token=old_token)
    assert refused.recv()["code"] == "unauthenticated"
    assert refused.wait_closed(timeout=5) == 4401
    rest.credentials(HTTP_AUTHORIZATION=f"Token {new_token}")
    assert rest.get("/api/me/").status_code == 200
    fresh = WS(b.ws_url, token=new_token)
    assert fresh.hello()["type"] == "hello"
    fresh.close()


def test_a_change_that_touches_no_right_leaves_sockets_alone(two_servers):
    a, _b = two_servers
    user = factories.make_user()
    room = factories.make_room(user)
    client = WS(a.ws_url, token=factories.make_token(user))
    client.subscribe(room.pk)
    user.first_name = "Ada"
    user.save()
    assert client.request("ping")["type"] == "pong"
    assert [f for f in client.frames if f["type"] in ("unsubscribed", "error")] == []
    client.close()


def test_group_side_changes_reach_the_members_sockets(two_servers):
    """The Moderators group losing its permission, or the group dropping a member (the
    changes made from the group's side), end the private subscriptions of every member."""
    from django.contrib.auth.models import Permission

    a, b = two_servers
    owner = factories.make_user()
    private = factories.make_room(owner, kind=Room.Kind.PRIVATE)
    first, second = factories.make_moderator(), factories.make_moderator()
    clients = [
        WS(a.ws_url, token=factories.make_token(first)),
        WS(b.ws_url, token=factories.make_token(second)),
    ]
    for client in clients:
        assert client.subscribe(private.pk, since=0)["type"] == "subscribed"
    group = _moderators()
    permission = Permission.objects.get(codename="moderate_room")
    started = time.monotonic()
    group.permissions.remove(permission)
    for client in clients:
        frame, took = _timed(client, lambda f: f["type"] == "unsubscribed", started)
        assert frame["room"] == private.pk and frame["reason"] == "forbidden"
        assert took < WITHIN, took

    group.permissions.add(permission)
    time.sleep(0.3)
    for client in clients:
        assert client.subscribe(private.pk, since=0)["type"] == "subscribed"
    seen = len(clients[0].frames)
    started = time.monotonic()
    group.user_set.remove(second)
    frame, took = _timed(clients[1], lambda f: f["type"] == "unsubscribed", started)
    assert frame["room"] == private.pk and took < WITHIN
    # The member still in the group keeps the room.
    time.sleep(0.5)
    assert clients[0].request("ping")["type"] == "pong"
    assert not [f for f in clients[0].frames[seen:] if f["type"] == "unsubscribed"]
    for client in clients:
        client.close()


def test_rights_changed_between_the_handshake_and_the_version_read_are_not_missed():
    """The race at connect: the user object of the handshake predates a change whose version
    the consumer then reads. The consumer, in this process with the real database and Redis,
    gets a stale user object (still active) for an account deactivated since: it must read the
    user again and close with 4403, not say hello."""
    import asyncio

    from channels.testing import WebsocketCommunicator

    from apps.messaging.consumers import ChatConsumer
    from apps.messaging.hub import shutdown

    user = factories.make_user()
    stale = type(user).objects.get(pk=user.pk)  # loaded "at the handshake", still active
    user.is_active = False
    user.save()  # bumps the rights version (apps.users.rights)

    async def scenario():
        communicator = WebsocketCommunicator(ChatConsumer.as_asgi(), "/ws/")
        communicator.scope["user"] = stale
        connected, _ = await communicator.connect()
        assert connected
        first = await communicator.receive_json_from(timeout=5)
        closed = await communicator.receive_output(timeout=5)
        await communicator.disconnect()
        await shutdown()
        return first, closed

    first, closed = asyncio.run(scenario())
    assert first["type"] == "error" and first["code"] == "forbidden", first
    assert closed == {"type": "websocket.close", "code": 4403}
