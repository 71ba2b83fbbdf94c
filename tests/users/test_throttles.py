"""WriteThrottle: every authenticated REST write takes from the user's shared bucket; room
creation, direct rooms and invites also from smaller budgets of their own; reads and read
receipts never take from the write bucket."""

import pytest
from django.test import override_settings

from apps.rooms import services as rooms
from tests import factories

pytestmark = pytest.mark.django_db

SLOW = 0.001  # refill per second: nothing comes back during a test


@override_settings(
    CHAT_RATE_LIMIT_MESSAGES=100,
    CHAT_RATE_LIMIT_PER_SECOND=SLOW,
    RATE_LIMIT_ROOM_CREATE=2,
    RATE_LIMIT_ROOM_CREATE_PER_SECOND=SLOW,
    RATE_LIMIT_DM_OPEN=2,
    RATE_LIMIT_DM_OPEN_PER_SECOND=SLOW,
    RATE_LIMIT_INVITE=2,
    RATE_LIMIT_INVITE_PER_SECOND=SLOW,
)
@pytest.mark.parametrize("budget", ["room_create", "dm_open", "invite"])
def test_costly_writes_have_their_own_smaller_budget(user, room, budget):
    client = factories.api_client(user)
    others = [factories.make_user() for _ in range(3)]

    def write(i):
        if budget == "room_create":
            return client.post("/api/rooms/", {"name": f"r{i}"}, format="json")
        if budget == "dm_open":
            return client.post("/api/rooms/direct/", {"user": others[i].pk}, format="json")
        return client.post(f"/api/rooms/{room.pk}/invite/", {"user": others[i].pk}, format="json")

    answers = [write(i) for i in range(3)]
    assert [a.status_code < 300 for a in answers] == [True, True, False]
    assert answers[2].status_code == 429 and answers[2].json()["code"] == "rate_limited"
    assert answers[2].json()["retry_after"] > 100 and int(answers[2]["Retry-After"]) > 100
    # The write bucket itself still has tokens: an ordinary write passes.
    sent = client.post(f"/api/rooms/{room.pk}/messages/", {"body": "still here"}, format="json")
    assert sent.status_code == 201


@override_settings(CHAT_RATE_LIMIT_MESSAGES=3, CHAT_RATE_LIMIT_PER_SECOND=SLOW)
def test_every_kind_of_write_shares_the_bucket_and_reads_do_not_count(user, other_user, room):
    rooms.room_join(room=room, user=other_user)
    client = factories.api_client(user)
    message = client.post(f"/api/rooms/{room.pk}/messages/", {"body": "a"}, format="json")
    mid = message.json()["data"]["id"]
    for _ in range(5):
        assert client.get(f"/api/rooms/{room.pk}/messages/").status_code == 200
        assert (
            client.post(f"/api/rooms/{room.pk}/read/", {"seq": 1}, format="json").status_code == 200
        )
    assert client.patch(f"/api/messages/{mid}/", {"body": "b"}, format="json").status_code == 200
    assert (
        client.post(f"/api/messages/{mid}/reactions/", {"emoji": "👍"}, format="json").status_code
        == 201
    )
    refused = client.patch(f"/api/rooms/{room.pk}/", {"topic": "t"}, format="json")
    assert refused.status_code == 429 and refused.json()["code"] == "rate_limited"
    # Another user's bucket is their own.
    other = factories.api_client(other_user)
    assert (
        other.post(f"/api/rooms/{room.pk}/messages/", {"body": "c"}, format="json").status_code
        == 201
    )
