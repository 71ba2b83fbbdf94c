"""REST for messages and reactions: same services as the WebSocket, envelopes as answers."""

import asyncio
import json
import uuid

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import close_old_connections
from django.test import override_settings

from apps.events.models import Event
from apps.messaging.models import Message
from apps.rooms import services as rooms
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def as_user(user):
    return factories.api_client(user)


def post_message(client, room, body="hello", **extra):
    return client.post(f"/api/rooms/{room.pk}/messages/", {"body": body, **extra}, format="json")


def test_send_returns_the_stored_envelope_and_a_resend_returns_the_original(room, user, as_user):
    client_id = str(uuid.uuid4())
    first = post_message(as_user, room, "hi there", client_id=client_id)
    assert first.status_code == 201
    envelope = first.json()
    stored = Event.objects.get(pk=envelope["id"])
    assert envelope == stored.envelope and envelope["type"] == "message.created"
    assert envelope["data"]["client_id"] == client_id and envelope["actor"]["id"] == user.pk
    again = post_message(as_user, room, "hi there", client_id=client_id)
    assert again.status_code == 200 and again.json() == envelope
    assert Message.objects.filter(author=user).count() == 1


@pytest.mark.parametrize(
    "body,status,code",
    [
        ("", 400, "invalid"),
        ("   ", 400, "invalid"),
        ("bell\x07", 400, "invalid"),
        ("x" * 4001, 413, "too_large"),
        (42, 400, "invalid"),
        (["a"], 400, "invalid"),
    ],
)
def test_bad_bodies_are_refused_with_a_stable_code(room, as_user, body, status, code):
    before = Event.objects.count()
    response = post_message(as_user, room, body)
    assert (response.status_code, response.json()["code"]) == (status, code)
    assert Event.objects.count() == before


def test_bad_client_id_and_reply_to_are_400(room, as_user):
    assert post_message(as_user, room, client_id="not-a-uuid").status_code == 400
    assert post_message(as_user, room, reply_to=10**9).json()["code"] == "invalid"
    assert not Message.objects.exists()


def test_history_is_newest_first_paged_by_seq_and_hides_deleted_bodies(
    room, user, other_user, as_user
):
    rooms.room_join(room=room, user=other_user)
    ids = [post_message(as_user, room, f"m{i}").json()["data"]["id"] for i in range(5)]
    as_user.delete(f"/api/messages/{ids[3]}/")
    factories.api_client(other_user).post(
        f"/api/messages/{ids[4]}/reactions/", {"emoji": "👍"}, format="json"
    )
    as_user.post(f"/api/messages/{ids[4]}/reactions/", {"emoji": "👍"}, format="json")
    page = as_user.get(f"/api/rooms/{room.pk}/messages/?limit=2").json()
    assert [m["id"] for m in page["results"]] == [ids[4], ids[3]]
    newest, deleted = page["results"]
    assert newest["reactions"] == [{"emoji": "👍", "count": 2, "me": True}]
    assert deleted["deleted"] is True and deleted["body"] is None
    assert deleted["author"] == {"id": user.pk, "username": user.username}
    older = as_user.get(page["next"]).json()
    assert [m["id"] for m in older["results"]] == [ids[2], ids[1]]
    last = as_user.get(older["next"]).json()
    assert [m["id"] for m in last["results"]] == [ids[0]] and last["next"] is None
    before = page["results"][1]["seq"]
    explicit = as_user.get(f"/api/rooms/{room.pk}/messages/?before={before}&limit=1").json()
    assert [m["id"] for m in explicit["results"]] == [ids[2]]


def test_edit_and_delete_answer_with_the_event(room, user, other_user, as_user):
    rooms.room_join(room=room, user=other_user)
    as_other = factories.api_client(other_user)
    mid = post_message(as_user, room, "draft").json()["data"]["id"]
    assert (
        as_other.patch(f"/api/messages/{mid}/", {"body": "mine"}, format="json").status_code == 403
    )
    edited = as_user.patch(f"/api/messages/{mid}/", {"body": "final"}, format="json")
    assert edited.status_code == 200 and edited.json()["type"] == "message.edited"
    assert as_user.get(f"/api/messages/{mid}/").json()["body"] == "final"
    refused = as_other.delete(f"/api/messages/{mid}/")
    assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
    deleted = as_user.delete(f"/api/messages/{mid}/")
    assert deleted.json()["type"] == "message.deleted"
    assert deleted.json()["data"] == {"id": mid, "by_moderator": False, "reason": None}
    assert as_user.delete(f"/api/messages/{mid}/").status_code == 400


def test_room_moderator_deletes_others_messages(room, user, other_user, as_user):
    rooms.room_join(room=room, user=other_user)
    mid = post_message(factories.api_client(other_user), room, "rude").json()["data"]["id"]
    deleted = as_user.delete(f"/api/messages/{mid}/?reason=rude")
    assert deleted.status_code == 200 and deleted.json()["data"]["by_moderator"] is True


def test_reactions_add_and_remove_by_body_or_query(room, as_user):
    mid = post_message(as_user, room).json()["data"]["id"]
    url = f"/api/messages/{mid}/reactions/"
    added = as_user.post(url, {"emoji": "🎉"}, format="json")
    assert added.status_code == 201 and added.json()["data"] == {"message": mid, "emoji": "🎉"}
    assert as_user.post(url, {"emoji": "🎉"}, format="json").status_code == 400
    as_user.post(url, {"emoji": "👍"}, format="json")
    assert as_user.delete(url, {"emoji": "🎉"}, format="json").json()["type"] == "reaction.removed"
    assert as_user.delete(f"{url}?emoji=👍").status_code == 200
    assert as_user.delete(url).json()["code"] == "invalid"
    assert as_user.get(f"/api/messages/{mid}/").json()["reactions"] == []


@override_settings(CHAT_RATE_LIMIT_MESSAGES=2, CHAT_RATE_LIMIT_PER_SECOND=0.01)
def test_send_is_limited_per_user_and_reading_is_not(room, user):
    client = factories.api_client(user)
    answers = [post_message(client, room, f"m{i}") for i in range(3)]
    history = client.get(f"/api/rooms/{room.pk}/messages/")
    assert [a.status_code for a in answers] == [201, 201, 429]
    refused = answers[2]
    assert refused.json()["code"] == "rate_limited" and refused.json()["retry_after"] > 0
    assert int(refused["Retry-After"]) >= 1
    assert history.status_code == 200  # reading is not throttled with sending
    assert Message.objects.filter(author=user).count() == 2


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_a_message_sent_over_rest_fans_out_live_to_the_room(room, user, as_user):
    layer = get_channel_layer()

    async def listen_then(action):
        channel = await layer.new_channel()
        await layer.group_add(f"room.{room.pk}", channel)
        try:
            envelope = await asyncio.get_running_loop().run_in_executor(None, action)
            received = await asyncio.wait_for(layer.receive(channel), timeout=10)
            return envelope, received
        finally:
            await layer.group_discard(f"room.{room.pk}", channel)

    def send():
        try:
            return post_message(as_user, room, "live").json()
        finally:
            close_old_connections()

    envelope, received = async_to_sync(listen_then)(send)
    assert json.loads(received["text"]) == envelope
