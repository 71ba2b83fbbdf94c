"""Invisible text, bidirectional tricks and fake emoji, sent to a real server by every path.

The attacker posts messages and names that render as nothing (zero-width and format characters,
Hangul fillers), Trojan-Source style unclosed bidi overrides, and arbitrary text as an emoji:
over REST, over the WebSocket (the batched send path) and as edits. Every one is refused with
`invalid` and leaves nothing behind; ordinary text in any script still goes through.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid

import pytest

from apps.events.models import Event
from apps.messaging.models import Message, Reaction
from apps.rooms.models import Room
from tests import factories
from tests.support.processes import assert_clean_log
from tests.support.wsclient import Socket, run

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.services]

INVISIBLE = [
    " \u200b\u200c\u200d ",  # zero-width space, non-joiner, joiner
    "\u2066\u2069",  # an empty isolate
    "\u3164\u3164",  # Hangul fillers: letters that draw nothing
    "\ufeff\u2060\u00ad",  # BOM, word joiner, soft hyphen
    "\u2800",  # the blank Braille pattern
    "\U000e0041\U000e0042",  # tag characters
    "\ufe0f",  # a variation selector on its own
]
BIDI_TRICKS = [
    "invoice\u202etxt.exe",  # an override never closed
    "a\u2067b",  # an isolate never closed
    "x\u202c",  # a close with nothing open
    "\u2067a\u202bb\u2069\u202c",  # crossed: the isolate closed before the embedding
    "".join("\u2066x\u2069" for _ in range(5)),  # ten controls: more than BIDI_MAX
]
NOT_EMOJI = ["x", "lol", ":+1:", "👍👍", "<b>", "\u200d", "1"]
# Every refused frame takes from the flood bucket: room for the whole test.
# Room for many writes: the write bucket and room creation's own (apps.users.ratelimit).
ROOMY = {
    "CHAT_RATE_LIMIT_MESSAGES": 500,
    "CHAT_RATE_LIMIT_PER_SECOND": 500,
    "RATE_LIMIT_ROOM_CREATE": 500,
    "RATE_LIMIT_ROOM_CREATE_PER_SECOND": 500,
}
FINE_TEXT = ["hello", "مرحبا", "שלום \u2067עולם\u2069!", "日本語", "e\u0301", "👨‍👩‍👧 ok"]


def _http(server, method, path, *, token=None, body=None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Token {token}"
    request = urllib.request.Request(
        server.http_url + path,
        method=method,
        headers=headers,
        data=json.dumps(body).encode() if body is not None else None,
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def _refused(status_body, field):
    status, body = status_body
    assert status == 400, (status, body)
    assert body["code"] == "invalid" and field in body["detail"], body


def test_invisible_and_bidi_bodies_are_refused_on_rest_websocket_and_edits(start_server, user):
    room = factories.make_room(user)
    mine = Message.objects.get(pk=factories.send(room, user, "original").envelope["data"]["id"])
    server = start_server(**ROOMY)
    token = factories.make_token(user)
    bad = INVISIBLE + BIDI_TRICKS
    seq_before = Room.objects.get(pk=room.pk).last_seq

    for body in bad:
        _refused(
            _http(
                server,
                "POST",
                f"/api/rooms/{room.pk}/messages/",
                token=token,
                body={"body": body, "client_id": str(uuid.uuid4())},
            ),
            "body",
        )
        _refused(
            _http(server, "PATCH", f"/api/messages/{mine.pk}/", token=token, body={"body": body}),
            "body",
        )

    async def scenario():
        sock = await Socket.open(server, token=token)
        replies = []
        for body in bad:
            # message.send goes through the send lanes' batch (amessage_send_many).
            replies.append(
                (
                    await sock.request(
                        {
                            "type": "message.send",
                            "room": room.pk,
                            "body": body,
                            "client_id": str(uuid.uuid4()),
                        }
                    )
                )[0]
            )
            replies.append(
                (await sock.request({"type": "message.edit", "message": mine.pk, "body": body}))[0]
            )
        fine = [
            (
                await sock.request(
                    {
                        "type": "message.send",
                        "room": room.pk,
                        "body": body,
                        "client_id": str(uuid.uuid4()),
                    }
                )
            )[0]
            for body in FINE_TEXT
        ]
        await sock.close()
        return replies, fine

    replies, fine = run(scenario())
    for reply in replies:
        assert reply["type"] == "error" and reply["code"] == "invalid", reply
        assert "body" in reply["message"], reply
    assert [reply["type"] for reply in fine] == ["ack"] * len(FINE_TEXT), fine
    assert [r["event"]["data"]["body"] for r in fine] == FINE_TEXT
    mine.refresh_from_db()
    assert mine.body == "original" and mine.edited_at is None
    # Only the fine messages were written, nothing of the refused ones.
    assert Room.objects.get(pk=room.pk).last_seq == seq_before + len(FINE_TEXT)
    assert Event.objects.filter(room=room).count() == seq_before + len(FINE_TEXT)
    assert_clean_log(server)


def test_blank_and_bidi_room_names_and_topics_are_refused(start_server, user):
    room = factories.make_room(user, name="plain")
    server = start_server(**ROOMY)
    token = factories.make_token(user)
    rooms_before = Room.objects.count()
    for name in INVISIBLE + BIDI_TRICKS:
        _refused(_http(server, "POST", "/api/rooms/", token=token, body={"name": name}), "name")
        _refused(
            _http(server, "PATCH", f"/api/rooms/{room.pk}/", token=token, body={"name": name}),
            "name",
        )
    for topic in INVISIBLE + BIDI_TRICKS:
        _refused(
            _http(server, "PATCH", f"/api/rooms/{room.pk}/", token=token, body={"topic": topic}),
            "topic",
        )
    assert Room.objects.count() == rooms_before
    room.refresh_from_db()
    assert (room.name, room.topic) == ("plain", "")
    # A topic can still be cleared, and names in any script still work.
    assert (
        _http(server, "PATCH", f"/api/rooms/{room.pk}/", token=token, body={"topic": ""})[0] == 200
    )
    status, created = _http(
        server, "POST", "/api/rooms/", token=token, body={"name": "שלום \u2067עולם\u2069"}
    )
    assert status == 201, created
    assert_clean_log(server)


def test_only_real_emoji_are_accepted_as_reactions(start_server, user):
    room = factories.make_room(user)
    message = Message.objects.get(pk=factories.send(room, user).envelope["data"]["id"])
    server = start_server(**ROOMY)
    token = factories.make_token(user)
    for emoji in NOT_EMOJI:
        _refused(
            _http(
                server,
                "POST",
                f"/api/messages/{message.pk}/reactions/",
                token=token,
                body={"emoji": emoji},
            ),
            "emoji",
        )

    async def scenario():
        sock = await Socket.open(server, token=token)
        refused = [
            (await sock.request({"type": "reaction.add", "message": message.pk, "emoji": emoji}))[0]
            for emoji in NOT_EMOJI
        ]
        accepted = [
            (await sock.request({"type": "reaction.add", "message": message.pk, "emoji": emoji}))[0]
            for emoji in ("👍", "❤️", "👍🏽", "🇫🇷", "👨‍👩‍👧", "#️⃣")
        ]
        await sock.close()
        return refused, accepted

    refused, accepted = run(scenario())
    assert all(r["type"] == "error" and r["code"] == "invalid" for r in refused), refused
    assert [r["type"] for r in accepted] == ["ack"] * 6, accepted
    assert sorted(
        Reaction.objects.filter(message=message).values_list("emoji", flat=True)
    ) == sorted(["👍", "❤️", "👍🏽", "🇫🇷", "👨‍👩‍👧", "#️⃣"])
    assert_clean_log(server)


def test_a_reaction_stored_before_the_emoji_list_can_still_be_taken_back(user):
    room = factories.make_room(user)
    message = Message.objects.get(pk=factories.send(room, user).envelope["data"]["id"])
    Reaction.objects.create(message=message, user=user, emoji="+1")  # a row from before
    response = factories.api_client(user).delete(
        f"/api/messages/{message.pk}/reactions/", {"emoji": "+1"}, format="json"
    )
    assert response.status_code == 200, response.content
    assert not Reaction.objects.filter(message=message).exists()
