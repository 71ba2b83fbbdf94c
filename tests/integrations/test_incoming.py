"""Incoming webhooks (PROTOCOL §10): room moderators make one; its URL posts as the room's
webhook bot, idempotently; revoking it stops it; the one limiter bounds it."""

from __future__ import annotations

import uuid

import pytest
from rest_framework.test import APIClient

from apps.messaging.models import Message
from apps.rooms.models import Membership
from tests import factories

pytestmark = [pytest.mark.django_db(transaction=True)]  # no Redis needed: embedded mode too


def _hook(room, user):
    answer = factories.api_client(user).post(
        f"/api/rooms/{room.pk}/webhooks/", {"name": "ci"}, format="json"
    )
    assert answer.status_code == 201, answer.content
    return answer.json()


def _path(hook):
    return hook["url"].split("testserver", 1)[1]


def test_moderators_create_webhooks_members_cannot():
    owner, member = factories.make_user(), factories.make_user()
    room = factories.make_room(owner, members=[member])
    refused = factories.api_client(member).post(
        f"/api/rooms/{room.pk}/webhooks/", {}, format="json"
    )
    assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
    hook = _hook(room, owner)
    assert set(hook) >= {"id", "url"} and "/api/hooks/" in hook["url"]
    # One bot per room, a member of it, whatever the number of webhooks.
    second = _hook(room, owner)
    assert second["bot"] == hook["bot"] and second["url"] != hook["url"]
    assert Membership.objects.get(room=room, user_id=hook["bot"]).is_active
    listed = factories.api_client(owner).get(f"/api/rooms/{room.pk}/webhooks/").json()
    assert {h["id"] for h in listed} == {hook["id"], second["id"]}
    assert all("url" not in h for h in listed)
    assert factories.api_client(member).get(f"/api/rooms/{room.pk}/webhooks/").status_code == 403


def test_posting_to_the_url_is_idempotent_on_the_key():
    owner = factories.make_user()
    room = factories.make_room(owner)
    hook = _hook(room, owner)
    anyone = APIClient()
    first = anyone.post(
        _path(hook), {"body": "deploy done"}, format="json", HTTP_IDEMPOTENCY_KEY="deploy-41"
    )
    assert first.status_code == 201, first.content
    event = first.json()
    assert event["type"] == "message.created" and event["actor"]["bot"] is True
    assert event["actor"]["id"] == hook["bot"] and event["data"]["body"] == "deploy done"
    again = anyone.post(
        _path(hook), {"body": "deploy done"}, format="json", HTTP_IDEMPOTENCY_KEY="deploy-41"
    )
    assert again.status_code == 200 and again.json()["id"] == event["id"]
    other = anyone.post(
        _path(hook), {"body": "deploy done"}, format="json", HTTP_IDEMPOTENCY_KEY="deploy-42"
    )
    assert other.status_code == 201 and other.json()["id"] != event["id"]
    client_id = str(uuid.uuid4())
    by_id = [
        anyone.post(_path(hook), {"body": "x", "client_id": client_id}, format="json")
        for _ in range(2)
    ]
    assert [r.status_code for r in by_id] == [201, 200]
    assert by_id[0].json()["id"] == by_id[1].json()["id"]
    assert Message.objects.filter(room=room).count() == 3


def test_a_wrong_or_revoked_url_is_not_found_and_posts_nothing():
    owner = factories.make_user()
    room = factories.make_room(owner)
    hook = _hook(room, owner)
    path = _path(hook)
    forged = path[:-6] + "xxxxx/"
    assert APIClient().post(forged, {"body": "x"}, format="json").status_code == 404
    bad = APIClient().post(path, {"body": ""}, format="json")
    assert bad.status_code == 400 and bad.json()["code"] == "invalid"
    assert APIClient().delete(path).status_code == 204
    gone = APIClient().post(path, {"body": "x"}, format="json")
    assert gone.status_code == 404 and gone.json()["code"] == "not_found"
    # The moderators' DELETE works too.
    second = _hook(room, owner)
    assert (
        factories.api_client(owner)
        .delete(f"/api/rooms/{room.pk}/webhooks/{second['id']}/")
        .status_code
        == 204
    )
    assert APIClient().post(_path(second), {"body": "x"}, format="json").status_code == 404
    assert not Message.objects.filter(room=room).exists()


def test_the_webhook_is_rate_limited_by_the_one_limiter(settings):
    settings.CHAT_RATE_LIMIT_MESSAGES = 3
    settings.CHAT_RATE_LIMIT_PER_SECOND = 0.01
    owner = factories.make_user()
    room = factories.make_room(owner)
    path = _path(_hook(room, owner))
    answers = [APIClient().post(path, {"body": f"n{i}"}, format="json") for i in range(5)]
    assert [a.status_code for a in answers] == [201, 201, 201, 429, 429]
    assert answers[-1].json()["code"] == "rate_limited" and answers[-1]["Retry-After"]
    assert Message.objects.filter(room=room).count() == 3
