"""One limiter for every write, against real server processes: REST writes and WebSocket frames
of one user take from the same bucket in Redis whichever process serves them, and typing frames
cannot flood a room by alternating their state (issue 12, finding 4)."""

import json
import time
import urllib.error
import urllib.request

import pytest

from apps.events.models import Event
from apps.rooms import services as rooms
from tests import factories
from tests.support.wsclient import WS

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.services]


def patch(server, path, token, body):
    request = urllib.request.Request(
        server.http_url + path,
        data=json.dumps(body).encode(),
        method="PATCH",
        headers={"Content-Type": "application/json", "Authorization": f"Token {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def test_rest_edits_and_websocket_sends_share_one_bucket_across_two_processes(start_server, user):
    limits = dict(
        CHAT_RATE_LIMIT_MESSAGES=20, CHAT_RATE_LIMIT_PER_SECOND=0.05, CHAT_RATE_LIMIT_STRIKES=100
    )
    server_a, server_b = start_server(**limits), start_server(**limits)
    room = factories.make_room(user)
    message_id = factories.send(room, user, "first").envelope["data"]["id"]
    token = factories.make_token(user)
    socket = WS(server_a.ws_url, token=token)
    try:
        socket.hello()
        acks = [socket.send_message(room.pk, body=f"ws {i}")["type"] for i in range(5)]
        assert acks == ["ack"] * 5  # 5 of the 20 tokens, spent on process A

        started = time.monotonic()
        answers = [
            patch(server_b, f"/api/messages/{message_id}/", token, {"body": f"edit {i}"})
            for i in range(60)
        ]  # a burst of 60 REST edits on process B
        elapsed = time.monotonic() - started
        statuses = [status for status, _, _ in answers]
        passed = statuses.count(200)
        # 15 tokens were left; the slow refill (0.05/s) may add one during the burst.
        assert 15 <= passed <= 15 + int(elapsed * 0.05) + 1, (passed, elapsed)
        assert statuses[:15] == [200] * 15 and set(statuses[passed:]) == {429}
        for _status, headers, body in answers[passed:]:
            assert body["code"] == "rate_limited" and body["retry_after"] > 0
            assert int(headers["Retry-After"]) >= 1
        assert Event.objects.filter(room=room, type="message.edited").count() == passed

        # Back on process A, the WebSocket finds the same bucket empty.
        refused = socket.send_message(room.pk, body="one more")
        assert refused["type"] == "error" and refused["code"] == "rate_limited"
        assert refused["retry_after"] > 0
    finally:
        socket.close()


def test_alternating_typing_frames_produce_a_bounded_number_of_events(
    start_server, user, other_user, room
):
    rooms.room_join(room=room, user=other_user)
    server = start_server(CHAT_TYPING_RATE_LIMIT=5, CHAT_TYPING_RATE_LIMIT_PER_SECOND=0.5)
    typist = WS(server.ws_url, token=factories.make_token(user))
    watcher = WS(server.ws_url, token=factories.make_token(other_user))
    try:
        typist.hello()
        watcher.hello()
        typist.subscribe(room.pk)
        watcher.subscribe(room.pk)
        started = time.monotonic()
        for i in range(1000):
            typist.send(type="typing", room=room.pk, state=i % 2 == 0)
        typist.request("ping")  # frames are handled in order: every typing frame is done
        elapsed = time.monotonic() - started
        watcher.request("ping")
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:  # let the last fan-outs arrive
            try:
                watcher.recv(timeout=0.2)
            except TimeoutError:
                pass
        typing = [
            f
            for f in watcher.frames
            if f["type"] == "typing" and f["data"]["user"]["id"] == user.pk
        ]
        # At most the bucket (5) plus its refill over the burst: never one event per frame.
        assert 1 <= len(typing) <= 5 + int(elapsed * 0.5) + 1, (len(typing), elapsed)
        assert typing[0]["data"]["state"] is True
    finally:
        typist.close()
        watcher.close()
