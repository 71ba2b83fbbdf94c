"""Blocking, the direct-message policy and the user search limits (PROTOCOL §7)."""

import uuid

import pytest

from apps.messaging.models import Message
from apps.messaging.services import SendRequest, message_send_many
from apps.rooms import services as rooms
from apps.rooms.models import Room
from apps.users.models import Block
from tests import factories

pytestmark = pytest.mark.django_db


def open_direct(client, other):
    return client.post("/api/rooms/direct/", {"user": other.pk}, format="json")


def test_block_list_and_unblock(user, other_user):
    api = factories.api_client(user)
    first = api.post("/api/blocks/", {"user": other_user.pk}, format="json")
    assert first.status_code == 201
    assert first.json()["user"] == {"id": other_user.pk, "username": other_user.username}
    assert api.post("/api/blocks/", {"user": other_user.pk}, format="json").status_code == 200
    assert [b["user"]["id"] for b in api.get("/api/blocks/").json()] == [other_user.pk]
    assert factories.api_client(other_user).get("/api/blocks/").json() == []
    assert api.delete(f"/api/blocks/{other_user.pk}/").status_code == 204
    gone = api.delete(f"/api/blocks/{other_user.pk}/")
    assert gone.status_code == 404 and gone.json()["code"] == "not_found"
    assert api.get("/api/blocks/").json() == []


@pytest.mark.parametrize("body,code", [({"user": "me"}, 400), ({}, 400), ({"user": 10**9}, 404)])
def test_bad_blocks_are_refused(user, body, code):
    response = factories.api_client(user).post("/api/blocks/", body, format="json")
    assert response.status_code == code
    assert not Block.objects.exists()


def test_blocking_yourself_is_invalid(user):
    response = factories.api_client(user).post("/api/blocks/", {"user": user.pk}, format="json")
    assert response.status_code == 400 and response.json()["code"] == "invalid"


def test_a_blocked_user_cannot_open_a_direct_room_with_the_blocker(user, other_user):
    factories.api_client(user).post("/api/blocks/", {"user": other_user.pk}, format="json")
    refused = open_direct(factories.api_client(other_user), user)
    assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
    assert not Room.objects.filter(kind=Room.Kind.DIRECT).exists()
    # The blocker may still open it (and post; the blocked side may not).
    assert open_direct(factories.api_client(user), other_user).status_code == 201


def test_a_blocked_user_cannot_post_in_an_existing_direct_room(user, other_user):
    direct = rooms.direct_room_open(user=user, other=other_user)
    factories.send(direct, other_user, "before the block")
    factories.api_client(user).post("/api/blocks/", {"user": other_user.pk}, format="json")
    blocked = factories.api_client(other_user)
    sent = blocked.post(f"/api/rooms/{direct.pk}/messages/", {"body": "hey"}, format="json")
    assert sent.status_code == 403 and sent.json()["code"] == "forbidden"
    assert open_direct(blocked, user).status_code == 403
    # The batched path, as the WebSocket sends: refused there too, the blocker's goes through.
    results = message_send_many(
        [
            SendRequest(direct.pk, other_user, "b", uuid.uuid4()),
            SendRequest(direct.pk, user, "a", uuid.uuid4()),
            SendRequest(direct.pk, other_user, "c", uuid.uuid4()),
        ]
    )
    assert [getattr(r, "code", None) for r in results] == ["forbidden", None, "forbidden"]
    message = Message.objects.filter(room=direct, author=user).get()
    react = blocked.post(f"/api/messages/{message.pk}/reactions/", {"emoji": "👍"}, format="json")
    assert react.status_code == 403
    assert list(Message.objects.filter(room=direct).values_list("body", flat=True)) == [
        "before the block",
        "a",
    ]
    # Reading stays possible (the room is theirs), and an unblock restores posting.
    assert blocked.get(f"/api/rooms/{direct.pk}/messages/").status_code == 200
    factories.api_client(user).delete(f"/api/blocks/{other_user.pk}/")
    again = blocked.post(f"/api/rooms/{direct.pk}/messages/", {"body": "ok"}, format="json")
    assert again.status_code == 201


def test_dm_policy_decides_who_may_open_a_direct_room(user, other_user):
    api = factories.api_client(user)
    assert api.get("/api/me/").json()["dm_policy"] == "anyone"
    assert api.patch("/api/me/", {"dm_policy": "later"}, format="json").status_code == 400
    answer = api.patch("/api/me/", {"dm_policy": "nobody"}, format="json")
    assert answer.status_code == 200 and answer.json()["dm_policy"] == "nobody"
    stranger = factories.api_client(other_user)
    refused = open_direct(stranger, user)
    assert refused.status_code == 403 and refused.json()["code"] == "forbidden"

    api.patch("/api/me/", {"dm_policy": "shared_rooms"}, format="json")
    assert open_direct(stranger, user).status_code == 403
    shared = factories.make_room(user, kind=Room.Kind.PRIVATE, members=[other_user])
    assert open_direct(stranger, user).status_code == 201
    # The existing room stays theirs when the policy tightens or the shared room goes.
    rooms.room_leave(room=shared, user=other_user)
    api.patch("/api/me/", {"dm_policy": "nobody"}, format="json")
    assert open_direct(stranger, user).status_code == 200
    # A site moderator can always reach someone.
    assert open_direct(factories.api_client(factories.make_moderator()), user).status_code == 201


def test_user_search_needs_two_characters_and_is_capped(user):
    for i in range(25):
        factories.make_user(username=f"findme{i:02d}")
    api = factories.api_client(user)
    for query in ("", "?search=", "?search=f", "?search=%20f%20"):
        response = api.get(f"/api/users/{query}")
        assert response.status_code == 400 and response.json()["code"] == "invalid", query
    found = api.get("/api/users/?search=findme").json()
    assert len(found) == 20 and all(u["username"].startswith("findme") for u in found)
