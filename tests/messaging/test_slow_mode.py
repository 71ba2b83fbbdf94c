"""Slow mode and the post policy (PROTOCOL §7), on every send path: REST, the batched service
(ORM and PostgreSQL pipeline), the asyncio PostgreSQL lanes, and the WebSocket."""

import asyncio
import uuid

import pytest

from apps.messaging.models import Message
from apps.messaging.services import SendRequest, message_send_many
from apps.rooms import services as rooms
from apps.rooms.models import Membership, Room
from tests import factories
from tests.support.services import postgresql_only


def slow_room(owner, *members, seconds=60):
    room = factories.make_room(owner, members=list(members))
    return rooms.room_update(room=room, actor=owner, slow_mode_seconds=seconds)


def post(client, room, body="hi"):
    return client.post(f"/api/rooms/{room.pk}/messages/", {"body": body}, format="json")


@pytest.mark.django_db
def test_room_moderators_set_slow_mode_and_post_policy(user, other_user):
    room = factories.make_room(user, members=[other_user])
    owner, member = factories.api_client(user), factories.api_client(other_user)
    path = f"/api/rooms/{room.pk}/"
    refused = member.patch(path, {"slow_mode_seconds": 10}, format="json")
    assert refused.status_code == 403
    for bad in (
        {"slow_mode_seconds": -1},
        {"slow_mode_seconds": 10**6},
        {"slow_mode_seconds": "soon"},
        {"post_policy": "owners"},
    ):
        response = owner.patch(path, bad, format="json")
        assert response.status_code == 400 and response.json()["code"] == "invalid", bad
    changed = owner.patch(
        path, {"slow_mode_seconds": 10, "post_policy": "moderators"}, format="json"
    )
    assert changed.status_code == 200
    assert (changed.json()["slow_mode_seconds"], changed.json()["post_policy"]) == (
        10,
        "moderators",
    )
    from apps.events.models import Event

    event = Event.objects.filter(room=room).order_by("-seq").first()
    assert event.type == "room.updated"
    assert event.envelope["data"] == {"slow_mode_seconds": 10, "post_policy": "moderators"}
    assert member.get(path).json()["slow_mode_seconds"] == 10


@pytest.mark.django_db
def test_slow_mode_refuses_a_fast_second_post_over_rest_while_a_moderator_posts_freely(
    user, other_user
):
    room = slow_room(user, other_user, seconds=60)
    member, owner = factories.api_client(other_user), factories.api_client(user)
    assert post(member, room, "first").status_code == 201
    second = post(member, room, "second")
    assert second.status_code == 429
    body = second.json()
    assert body["code"] == "rate_limited" and 55 <= body["retry_after"] <= 60
    assert second["Retry-After"] == str(body["retry_after"])
    for i in range(3):
        assert post(owner, room, f"owner {i}").status_code == 201
    assert list(
        Message.objects.filter(room=room, author=other_user).values_list("body", flat=True)
    ) == ["first"]
    # Turning slow mode off lets the member post again at once.
    rooms.room_update(room=room, actor=user, slow_mode_seconds=0)
    assert post(member, room, "now").status_code == 201


@pytest.mark.django_db
def test_a_slow_mode_wait_ends(user, other_user):
    room = slow_room(user, other_user, seconds=60)
    assert post(factories.api_client(other_user), room).status_code == 201
    from datetime import timedelta

    from django.utils import timezone

    Membership.objects.filter(room=room, user=other_user).update(
        last_posted_at=timezone.now() - timedelta(seconds=61)
    )
    assert post(factories.api_client(other_user), room).status_code == 201


@pytest.mark.django_db
def test_announcement_rooms_take_posts_from_moderators_only(user, other_user):
    room = factories.make_room(user, members=[other_user])
    rooms.room_update(room=room, actor=user, post_policy=Room.PostPolicy.MODERATORS)
    refused = post(factories.api_client(other_user), room)
    assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
    assert post(factories.api_client(user), room).status_code == 201
    rooms.member_set_role(room=room, actor=user, user=other_user, role="moderator")
    assert post(factories.api_client(other_user), room).status_code == 201


@pytest.mark.django_db
def test_two_sends_of_one_member_in_one_batch_the_second_refused(user, other_user):
    """The batched service (ORM on SQLite, the pipelined thread path on PostgreSQL)."""
    room = slow_room(user, other_user, seconds=30)
    results = message_send_many(
        [
            SendRequest(room.pk, other_user, "one", uuid.uuid4()),
            SendRequest(room.pk, user, "mod one", uuid.uuid4()),
            SendRequest(room.pk, other_user, "two", uuid.uuid4()),
            SendRequest(room.pk, user, "mod two", uuid.uuid4()),
        ]
    )
    assert [getattr(r, "code", None) for r in results] == [None, None, "rate_limited", None]
    assert results[2].retry_after == 30
    stamped = Membership.objects.get(room=room, user=other_user).last_posted_at
    assert stamped is not None
    assert Membership.objects.get(room=room, user=user).last_posted_at is None  # not stamped
    assert (
        message_send_many([SendRequest(room.pk, other_user, "three", uuid.uuid4())])[0].code
        == "rate_limited"
    )


@pytest.mark.django_db(transaction=True)
@postgresql_only("the asyncio psycopg connection of the send lanes")
def test_the_asyncio_lane_applies_slow_mode_and_blocks_in_its_batch():
    import psycopg
    from django.db import connection

    from apps.messaging.services import amessage_send_many
    from apps.users.services import block_create

    owner, member, peer = (factories.make_user() for _ in range(3))
    room = slow_room(owner, member, seconds=30)
    direct = rooms.direct_room_open(user=member, other=peer)
    block_create(blocker=peer, blocked=member)
    requests = [
        SendRequest(room.pk, member, "one", uuid.uuid4()),
        SendRequest(room.pk, member, "two", uuid.uuid4()),
        SendRequest(room.pk, owner, "mod", uuid.uuid4()),
        SendRequest(direct.pk, member, "to a blocker", uuid.uuid4()),
        SendRequest(direct.pk, peer, "from the blocker", uuid.uuid4()),
    ]

    async def scenario(batch):
        params = connection.get_connection_params()
        params.pop("cursor_factory", None)
        async with await psycopg.AsyncConnection.connect(**params, autocommit=True) as conn:
            return await amessage_send_many(conn, batch)

    results = asyncio.run(scenario(requests))
    assert [getattr(r, "code", None) for r in results] == [
        None,
        "rate_limited",
        None,
        "forbidden",
        None,
    ]
    assert Membership.objects.get(room=room, user=member).last_posted_at is not None
    later = asyncio.run(scenario([SendRequest(room.pk, member, "three", uuid.uuid4())]))
    assert later[0].code == "rate_limited" and 1 <= later[0].retry_after <= 30
    assert sorted(Message.objects.values_list("body", flat=True)) == [
        "from the blocker",
        "mod",
        "one",
    ]


@pytest.mark.django_db(transaction=True)
@pytest.mark.services
def test_slow_mode_and_blocks_over_the_websocket(server):
    from apps.users.services import block_create
    from tests.support.wsclient import WS

    owner, member, peer = (factories.make_user() for _ in range(3))
    site_moderator = factories.make_moderator()
    room = slow_room(owner, member, site_moderator, seconds=45)
    announcements = factories.make_room(owner, members=[member])
    rooms.room_update(room=announcements, actor=owner, post_policy="moderators")
    direct = rooms.direct_room_open(user=member, other=peer)
    block_create(blocker=peer, blocked=member)
    socket = WS(server.ws_url, token=factories.make_token(member))
    mod = WS(server.ws_url, token=factories.make_token(owner))
    try:
        socket.hello()
        mod.hello()
        assert socket.send_message(room.pk, body="first")["type"] == "ack"
        refused = socket.send_message(room.pk, body="second")
        assert refused["type"] == "error" and refused["code"] == "rate_limited"
        assert 40 <= refused["retry_after"] <= 45
        for i in range(3):
            assert mod.send_message(room.pk, body=f"mod {i}")["type"] == "ack"
        # A site moderator is exempt too (their permissions are read off the event loop).
        staff = WS(server.ws_url, token=factories.make_token(site_moderator))
        try:
            staff.hello()
            for i in range(2):
                assert staff.send_message(room.pk, body=f"staff {i}")["type"] == "ack"
        finally:
            staff.close()
        announced = socket.send_message(announcements.pk, body="may I?")
        assert (announced["type"], announced["code"]) == ("error", "forbidden")
        blocked = socket.send_message(direct.pk, body="hello?")
        assert (blocked["type"], blocked["code"]) == ("error", "forbidden")
    finally:
        socket.close()
        mod.close()
    assert Message.objects.filter(author=member).count() == 1
