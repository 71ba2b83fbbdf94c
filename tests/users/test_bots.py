"""Bot accounts (PROTOCOL §10): owned by a user, acting through the same REST API and
WebSocket with their token, `actor.bot` true on their events."""

from __future__ import annotations

import uuid

import jsonschema
import pytest
from rest_framework.test import APIClient

from apps.events.models import Event
from apps.events.schemas import SCHEMAS
from apps.users.models import ApiToken, User
from tests import factories
from tests.support.wsclient import WS

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]


def _bot(owner, username="deploy-bot"):
    answer = factories.api_client(owner).post("/api/bots/", {"username": username}, format="json")
    assert answer.status_code == 201, answer.content
    return answer.json()


def _as(key):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def test_a_bot_posts_over_rest_and_its_events_say_bot(server):
    owner = factories.make_user()
    room = factories.make_room(owner)
    bot = _bot(owner)
    assert bot["bot"] is True and bot["owner"] == owner.pk and bot["token"].startswith("chat_")
    assert User.objects.get(pk=bot["id"]).has_usable_password() is False
    # The room's owner invites it; a person's socket watches.
    assert factories.api_client(owner).post(
        f"/api/rooms/{room.pk}/invite/", {"user": bot["id"]}, format="json"
    ).status_code in (200, 201)
    watcher = WS(server.ws_url, token=factories.make_token(owner))
    watcher.subscribe(room.pk)
    sent = _as(bot["token"]).post(
        f"/api/rooms/{room.pk}/messages/", {"body": "build green"}, format="json"
    )
    assert sent.status_code == 201, sent.content
    envelope = sent.json()
    assert envelope["actor"] == {"id": bot["id"], "username": "deploy-bot", "bot": True}
    jsonschema.validate(envelope, SCHEMAS["message.created"])
    live = watcher.until(lambda f: f.get("type") == "message.created")
    assert live["actor"]["bot"] is True
    # The event log holds the same (Kafka and webhooks read it).
    assert Event.objects.get(pk=envelope["id"]).envelope["actor"]["bot"] is True
    # A person's events carry no bot flag.
    mine = factories.send(room, owner, "thanks").envelope
    assert "bot" not in mine["actor"]
    watcher.close()


def test_a_bot_acts_over_the_websocket_too(server):
    owner = factories.make_user()
    room = factories.make_room(owner)
    bot = _bot(owner, "ws-bot")
    factories.api_client(owner).post(
        f"/api/rooms/{room.pk}/invite/", {"user": bot["id"]}, format="json"
    )
    client = WS(server.ws_url, token=bot["token"])
    assert client.hello()["user"]["id"] == bot["id"]
    client.subscribe(room.pk)
    ack = client.request("message.send", room=room.pk, body="hello", client_id=str(uuid.uuid4()))
    assert ack["type"] == "ack" and ack["event"]["actor"]["bot"] is True, ack
    client.close()


def test_owners_list_and_delete_their_bots_only():
    owner, other = factories.make_user(), factories.make_user()
    bot = _bot(owner, "mine-bot")
    assert [b["id"] for b in factories.api_client(owner).get("/api/bots/").json()] == [bot["id"]]
    assert factories.api_client(other).get("/api/bots/").json() == []
    assert factories.api_client(other).delete(f"/api/bots/{bot['id']}/").status_code == 404
    assert factories.api_client(owner).delete(f"/api/bots/{bot['id']}/").status_code == 204
    assert _as(bot["token"]).get("/api/me/").status_code == 401
    assert not ApiToken.objects.filter(user_id=bot["id"]).exists()
    assert factories.api_client(owner).get("/api/bots/").json() == []


def test_bot_names_follow_the_username_rules_and_bots_make_no_bots():
    owner = factories.make_user(username="ada")
    taken = factories.api_client(owner).post("/api/bots/", {"username": "ADA"}, format="json")
    assert taken.status_code == 400 and taken.json()["code"] == "invalid"
    bad = factories.api_client(owner).post("/api/bots/", {"username": "a b"}, format="json")
    assert bad.status_code == 400
    bot = _bot(owner, "helper")
    refused = _as(bot["token"]).post("/api/bots/", {"username": "child"}, format="json")
    assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
    assert not User.objects.filter(username="child").exists()
