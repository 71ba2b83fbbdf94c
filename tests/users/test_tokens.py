"""Scoped, expiring, revocable API tokens stored hashed (PROTOCOL §10), on REST and on real
server processes' WebSockets."""

from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from apps.users.models import ApiToken
from tests import factories
from tests.hardening.test_ws_rights import two_servers  # noqa: F401 (a fixture)
from tests.support.wsclient import WS

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]


def _create(user, **body):
    client = factories.api_client(user)
    return client.post(
        "/api/tokens/", {"name": "ci", "scopes": ["read", "write"], **body}, format="json"
    )


def _client(key):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def test_a_token_is_shown_once_and_stored_as_a_sha256_only():
    user = factories.make_user()
    created = _create(user, name="deploy bot", scopes=["read"])
    assert created.status_code == 201, created.content
    key = created.data["token"]
    assert key.startswith("chat_") and len(key) > 50
    assert created.data["scopes"] == ["read"] and created.data["name"] == "deploy bot"
    row = ApiToken.objects.get(pk=created.data["id"])
    secret = key.split("_", 2)[2]
    assert row.digest == hashlib.sha256(secret.encode()).hexdigest()
    stored = " ".join(str(v) for v in ApiToken.objects.filter(pk=row.pk).values().first().values())
    assert secret not in stored
    listed = factories.api_client(user).get("/api/tokens/").json()
    assert [t["id"] for t in listed] == [row.pk]
    assert "token" not in listed[0] and key not in str(listed)
    # The key authenticates; a key with the right id and another secret does not.
    assert _client(key).get("/api/me/").json()["id"] == user.pk
    forged = key[:18] + "x" * (len(key) - 18)
    assert _client(forged).get("/api/me/").status_code == 401


def test_a_read_token_reads_but_cannot_write_on_rest():
    user = factories.make_user()
    room = factories.make_room(user)
    read = _create(user, scopes=["read"]).data["token"]
    write = _create(user, scopes=["write"]).data["token"]
    assert _client(read).get(f"/api/rooms/{room.pk}/messages/").status_code == 200
    refused = _client(read).post(f"/api/rooms/{room.pk}/messages/", {"body": "hi"}, format="json")
    assert refused.status_code == 403 and refused.json()["code"] == "forbidden", refused.content
    assert _client(read).post("/api/rooms/", {"name": "x"}, format="json").status_code == 403
    assert _client(read).delete(f"/api/tokens/{ApiToken.objects.first().pk}/").status_code == 403
    sent = _client(write).post(f"/api/rooms/{room.pk}/messages/", {"body": "hi"}, format="json")
    assert sent.status_code == 201, sent.content


def test_an_expired_token_is_refused():
    user = factories.make_user()
    created = _create(user, expires_at=(timezone.now() + timedelta(hours=1)).isoformat())
    assert created.status_code == 201
    key = created.data["token"]
    assert _client(key).get("/api/me/").status_code == 200
    ApiToken.objects.filter(pk=created.data["id"]).update(expires_at=timezone.now())
    refused = _client(key).get("/api/me/")
    assert refused.status_code == 401 and refused.json()["code"] == "unauthenticated"


@pytest.mark.parametrize(
    "body, field",
    [
        ({"scopes": ["admin"]}, "scopes"),
        ({"scopes": []}, "scopes"),
        ({"scopes": "read"}, "scopes"),
        ({"name": ""}, "name"),
        ({"expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"expires_at": "soon"}, "expires_at"),
    ],
)
def test_bad_token_requests_are_invalid_and_create_nothing(body, field):
    user = factories.make_user()
    answer = _create(user, **body)
    assert answer.status_code == 400 and answer.json()["code"] == "invalid", answer.content
    assert field in answer.json()["errors"]
    assert not ApiToken.objects.exists()


def test_last_used_is_noted_at_most_once_a_minute():
    user = factories.make_user()
    created = _create(user).data
    assert ApiToken.objects.get(pk=created["id"]).last_used_at is None
    _client(created["token"]).get("/api/me/")
    first = ApiToken.objects.get(pk=created["id"]).last_used_at
    assert first is not None
    _client(created["token"]).get("/api/me/")
    assert ApiToken.objects.get(pk=created["id"]).last_used_at == first
    ApiToken.objects.filter(pk=created["id"]).update(last_used_at=first - timedelta(minutes=2))
    _client(created["token"]).get("/api/me/")
    assert ApiToken.objects.get(pk=created["id"]).last_used_at > first


def test_revoking_is_per_owner_and_the_old_login_token_keeps_working():
    user, other = factories.make_user(), factories.make_user()
    created = _create(user).data
    assert factories.api_client(other).delete(f"/api/tokens/{created['id']}/").status_code == 404
    assert factories.api_client(user).delete(f"/api/tokens/{created['id']}/").status_code == 204
    assert _client(created["token"]).get("/api/me/").status_code == 401
    # POST /api/auth/token/ (DRF's single token) still logs in.
    login = APIClient().post(
        "/api/auth/token/", {"username": user.username, "password": "pw-for-tests-1"}, format="json"
    )
    assert login.status_code == 200
    assert _client(login.json()["token"]).get("/api/me/").json()["id"] == user.pk


def test_revoking_a_token_closes_its_sockets_with_4401_on_every_process(two_servers):  # noqa: F811
    a, b = two_servers
    user = factories.make_user()
    room = factories.make_room(user)
    revoked = _create(user).data
    kept = _create(user).data
    doomed = [WS(a.ws_url, token=revoked["token"]), WS(b.ws_url, token=revoked["token"])]
    survivor = WS(a.ws_url, token=kept["token"])
    for client in [*doomed, survivor]:
        assert client.subscribe(room.pk)["type"] == "subscribed"
    assert factories.api_client(user).delete(f"/api/tokens/{revoked['id']}/").status_code == 204
    for client in doomed:
        assert client.wait_closed(timeout=5) == 4401
        assert any(f.get("code") == "unauthenticated" for f in client.frames)
    # The other token's socket is untouched.
    assert survivor.request("ping")["type"] == "pong"
    survivor.close()
    # And the revoked token opens no new socket.
    again = WS(a.ws_url, token=revoked["token"])
    assert again.wait_closed(timeout=5) == 4401


def test_a_read_token_socket_subscribes_but_every_write_frame_is_forbidden(server):
    user = factories.make_user()
    room = factories.make_room(user)
    message = factories.send(room, user, "mine")
    read = _create(user, scopes=["read"]).data["token"]
    client = WS(server.ws_url, token=read)
    assert client.subscribe(room.pk, since=0)["type"] == "subscribed"
    for frame in [
        {"type": "message.send", "room": room.pk, "body": "no", "client_id": str(uuid.uuid4())},
        {"type": "message.edit", "message": message.envelope["data"]["id"], "body": "no"},
        {"type": "message.delete", "message": message.envelope["data"]["id"]},
        {"type": "reaction.add", "message": message.envelope["data"]["id"], "emoji": "👍"},
        {"type": "read", "room": room.pk, "seq": 1},
        {"type": "typing", "room": room.pk, "state": True},
    ]:
        kind = frame.pop("type")
        answer = client.request(kind, **frame)
        assert answer["type"] == "error" and answer["code"] == "forbidden", (kind, answer)
    assert client.request("ping")["type"] == "pong"  # still open
    from apps.messaging.models import Message

    assert list(Message.objects.values_list("body", flat=True)) == ["mine"]
    client.close()


def test_a_socket_closes_when_its_token_expires(server):
    user = factories.make_user()
    created = _create(user, expires_at=(timezone.now() + timedelta(seconds=2)).isoformat()).data
    client = WS(server.ws_url, token=created["token"])
    assert client.request("ping")["type"] == "pong"
    assert client.wait_closed(timeout=8) == 4401
