"""Attacks on the WebSocket and REST surfaces, driven against real server processes.

Each test names the attack and asserts what the attacker (and everyone else) sees. One module
of independent attack scenarios on the shared server fixtures; each test stands alone.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import urllib.error
import urllib.request
import uuid

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from apps.events.models import Event
from apps.messaging.models import Message
from apps.rooms import services as rooms
from apps.rooms.models import Room
from tests import factories
from tests.support.processes import assert_clean_log
from tests.support.wsclient import Socket, handshake_status, run, session_cookie

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.services]

ERROR_CODES = {
    "invalid",
    "unauthenticated",
    "forbidden",
    "not_found",
    "rate_limited",
    "too_large",
    "unavailable",
}


def _http(server, method, path, *, headers=None, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        server.http_url + path,
        data=data,
        method=method,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _private_room_with_message():
    owner, stranger = factories.make_user(), factories.make_user()
    private = factories.make_room(owner, kind=Room.Kind.PRIVATE)
    message = Message.objects.get(
        pk=factories.send(private, owner, "secret").envelope["data"]["id"]
    )
    return owner, stranger, private, message


def _missing_ids():
    return Room.objects.order_by("-pk").values_list("pk", flat=True).first() + 1000, (
        (Message.objects.order_by("-pk").values_list("pk", flat=True).first() or 0) + 1000
    )


def _same_error(a: dict, b: dict) -> None:
    """Two refusals are indistinguishable apart from the ref."""
    assert a["type"] == b["type"] == "error", (a, b)
    assert (a["code"], a.get("message")) == (b["code"], b.get("message")), (a, b)


# --- Cross-site WebSocket hijacking ---------------------------------------------------------------


def test_foreign_origin_with_a_valid_session_cookie_is_refused(start_server, user):
    server = start_server()
    cookie = session_cookie(user)

    async def scenario():
        refused = await handshake_status(server, cookie=cookie, origin="https://evil.example")
        no_origin = await handshake_status(server, cookie=cookie, origin=None)
        own = await Socket.open(server, cookie=cookie)  # the same cookie from our own page works
        await own.close()
        return refused, no_origin, own.hello

    refused, no_origin, hello = run(scenario())
    assert refused == 403
    assert no_origin == 403
    assert hello["user"]["id"] == user.pk


# --- Tokens never in URLs or logs ---------------------------------------------------------------


def test_a_token_in_the_url_authenticates_nothing(start_server, user):
    server = start_server()
    key = factories.make_token(user)

    async def scenario():
        sock = await Socket.open(server, query=f"?token={key}&auth_token={key}", expect_hello=False)
        return await sock.wait_closed()

    code, frames = run(scenario())
    assert code == 4401
    assert [f.get("code") for f in frames if f["type"] == "error"] == ["unauthenticated"]
    assert not [f for f in frames if f["type"] == "hello"]
    status, _ = _http(server, "GET", f"/api/me/?token={key}&auth_token={key}")
    assert status in (401, 403)


def test_tokens_and_passwords_never_reach_the_server_log(start_server):
    server = start_server(LOG_LEVEL="DEBUG")
    password = "Pw-" + secrets.token_hex(8)
    username = "logcheck" + secrets.token_hex(3)
    wrong_key = secrets.token_hex(20)

    status, body = _http(
        server, "POST", "/api/users/", body={"username": username, "password": password}
    )
    assert status == 201, body
    status, body = _http(
        server, "POST", "/api/auth/token/", body={"username": username, "password": password}
    )
    assert status == 200, body
    key = json.loads(body)["token"]
    assert _http(server, "GET", "/api/me/", headers={"Authorization": f"Token {key}"})[0] == 200
    assert (
        _http(server, "GET", "/api/me/", headers={"Authorization": f"Token {wrong_key}"})[0] == 401
    )
    assert _http(
        server, "POST", "/api/auth/token/", body={"username": username, "password": password + "x"}
    )[0] in (400, 401)

    async def scenario():
        sock = await Socket.open(server, token=key)
        await sock.request(
            {"type": "message.send", "room": 10**9, "body": key, "client_id": str(uuid.uuid4())}
        )
        await sock.send("{not json " + key)
        await sock.ping()
        await sock.close()
        bad = await Socket.open(server, token=wrong_key, expect_hello=False)
        await bad.wait_closed()

    run(scenario())
    server.stop()
    output = server.output()
    for secret in (key, wrong_key, password):
        assert secret not in output, f"{secret!r} in the server log"
    assert_clean_log(server)


# --- A non-member reading a private room ---------------------------------------------------------


def test_a_non_member_cannot_read_a_private_room_over_the_websocket(start_server):
    owner, stranger, private, message = _private_room_with_message()
    missing_room, missing_message = _missing_ids()
    server = start_server()
    token = factories.make_token(stranger)

    async def scenario():
        sock = await Socket.open(server, token=token)
        replies = {}
        for name, frame in {
            "subscribe": {"type": "subscribe", "room": private.pk},
            "replay": {"type": "subscribe", "room": private.pk, "since": 0},
            "send": {
                "type": "message.send",
                "room": private.pk,
                "body": "hi",
                "client_id": str(uuid.uuid4()),
            },
            "react": {"type": "reaction.add", "message": message.pk, "emoji": "👍"},
            "edit": {"type": "message.edit", "message": message.pk, "body": "mine now"},
            "delete": {"type": "message.delete", "message": message.pk},
            "read": {"type": "read", "room": private.pk, "seq": 1},
        }.items():
            reply, before = await sock.request(frame)
            replies[name] = (reply, before)
            target = (
                dict(frame, room=missing_room)
                if "room" in frame
                else dict(frame, message=missing_message)
            )
            replies[name + "-missing"] = await sock.request(target)
        leaked = await sock.drain(1.0)
        await sock.close()
        return replies, leaked

    replies, leaked = run(scenario())
    for name in ("subscribe", "replay", "send", "react", "edit", "delete", "read"):
        reply, before = replies[name]
        assert reply["code"] == "not_found", (name, reply)
        assert not [f for f in before if f.get("room") == private.pk], (name, before)
        _same_error(reply, replies[name + "-missing"][0])
    assert not [f for f in leaked if f.get("room") == private.pk]
    assert (
        Event.objects.filter(room=private).count()
        == private.__class__.objects.get(pk=private.pk).last_seq
    )
    assert not Message.objects.filter(room=private, author=stranger).exists()
    assert not message.reactions.exists()
    assert_clean_log(server)


def test_a_non_member_gets_the_same_404_as_for_missing_rooms_and_messages_over_rest(db):
    owner, stranger, private, message = _private_room_with_message()
    missing_room, missing_message = _missing_ids()
    api = APIClient()
    api.force_authenticate(stranger)
    paths = [
        ("get", "/api/rooms/{room}/"),
        ("get", "/api/rooms/{room}/messages/"),
        ("get", "/api/rooms/{room}/events/?since=0"),
        ("get", "/api/rooms/{room}/members/"),
        ("post", "/api/rooms/{room}/join/"),
        ("get", "/api/messages/{message}/"),
        ("get", "/api/messages/{message}/reactions/"),
        ("post", "/api/messages/{message}/reactions/"),
    ]
    for method, template in paths:
        real = getattr(api, method)(
            template.format(room=private.pk, message=message.pk),
            {"emoji": "👍"} if method == "post" else None,
            format="json",
        )
        fake = getattr(api, method)(
            template.format(room=missing_room, message=missing_message),
            {"emoji": "👍"} if method == "post" else None,
            format="json",
        )
        if real.status_code == 405 and fake.status_code == 405:
            continue  # the route has no such method: nothing to compare
        assert real.status_code == 404, (template, real.status_code, real.content)
        assert (real.status_code, real.json()) == (fake.status_code, fake.json()), template
    assert not message.reactions.exists()
    assert not private.memberships.filter(user=stranger).exists()


# --- Banned, removed and muted members ------------------------------------------------------------


def _member_socket_after(start_server, action):
    """A member subscribed to a private room; `action(room, owner, member)` runs; the owner
    then posts. Returns what the member's socket saw, its reply to a send and its close code."""
    owner, member = factories.make_user(), factories.make_user()
    private = factories.make_room(owner, kind=Room.Kind.PRIVATE, members=[member])
    server_a, server_b = start_server(), start_server()
    member_token, owner_token = factories.make_token(member), factories.make_token(owner)

    async def scenario():
        sock = await Socket.open(server_a, token=member_token)
        watcher = await Socket.open(server_b, token=owner_token)
        for s in (sock, watcher):
            reply, _ = await s.request({"type": "subscribe", "room": private.pk, "since": 0})
            assert reply["type"] == "subscribed", reply
        await asyncio.to_thread(action, private, owner, member)
        reply, _ = await watcher.request(
            {
                "type": "message.send",
                "room": private.pk,
                "body": "after",
                "client_id": str(uuid.uuid4()),
            }
        )
        assert reply["type"] == "ack", reply
        await watcher.drain(1.0)
        seen, send_reply = [], None
        try:
            seen = await sock.drain(2.0)
            send_reply, before = await sock.request(
                {
                    "type": "message.send",
                    "room": private.pk,
                    "body": "still here?",
                    "client_id": str(uuid.uuid4()),
                }
            )
            seen += before
        except Exception:  # the server may close the socket: judged on the close code below
            pass
        code = sock.close_code
        await sock.close()
        await watcher.close()
        return seen, send_reply, code, reply["event"]["seq"]

    seen, send_reply, code, after_seq = run(scenario())
    assert_clean_log(server_a)
    assert_clean_log(server_b)
    return private, member, seen, send_reply, code, after_seq


@pytest.mark.parametrize("how", ["banned", "removed"])
def test_a_banned_or_removed_members_open_socket_sees_nothing_more(start_server, how):
    def act(room, owner, member):
        if how == "banned":
            rooms.member_ban(room=room, actor=owner, user=member, reason="spam")
        else:
            rooms.member_kick(room=room, actor=owner, user=member)

    private, member, seen, send_reply, code, after_seq = _member_socket_after(start_server, act)
    assert not [
        f for f in seen if f.get("room") == private.pk and (f.get("seq") or 0) >= after_seq
    ], seen
    assert send_reply is None or (
        send_reply["type"] == "error" and send_reply["code"] in {"forbidden", "not_found"}
    ), send_reply
    assert code in (None, 4403), code
    assert not Message.objects.filter(room=private, author=member).exists()


def test_a_muted_member_cannot_send(start_server):
    def act(room, owner, member):
        rooms.member_mute(
            room=room, actor=owner, user=member, until=timezone.now() + timezone.timedelta(hours=1)
        )

    private, member, seen, send_reply, code, _ = _member_socket_after(start_server, act)
    assert send_reply["type"] == "error" and send_reply["code"] == "forbidden", send_reply
    assert code is None  # muted, not removed: the socket stays and still reads the room
    assert [f for f in seen if f.get("type") == "message.created"], seen
    assert not Message.objects.filter(room=private, author=member).exists()


# --- Flooding across two processes ---------------------------------------------------------------


def test_flooding_is_rate_limited_then_closed_with_4429_across_two_processes(start_server, user):
    limits = dict(
        CHAT_RATE_LIMIT_MESSAGES=6, CHAT_RATE_LIMIT_PER_SECOND=0.2, CHAT_RATE_LIMIT_STRIKES=3
    )
    server_a, server_b = start_server(**limits), start_server(**limits)
    room = factories.make_room(user)
    token = factories.make_token(user)

    def send_frame():
        return {
            "type": "message.send",
            "room": room.pk,
            "body": "flood",
            "client_id": str(uuid.uuid4()),
        }

    async def scenario():
        a = await Socket.open(server_a, token=token)
        b = await Socket.open(server_b, token=token)
        acks = 0
        for _ in range(6):  # the whole bucket, spent on process A
            reply, _ = await a.request(send_frame())
            acks += reply["type"] == "ack"
        replies = []
        for _ in range(20):  # process B shares the budget: refused, then disconnected
            try:
                reply, _ = await b.request(send_frame())
            except Exception:
                break
            replies.append(reply)
        code = b.close_code if b.close_code is not None else (await b.wait_closed(5))[0]
        await a.close()
        return acks, replies, code

    acks, replies, code = run(scenario())
    assert acks == 6
    codes = [r.get("code") for r in replies if r["type"] == "error"]
    assert codes and codes[0] == "rate_limited", replies
    # A slow refill (0.2/s) may let one more through; the budget is not doubled per process.
    assert sum(r["type"] == "ack" for r in replies) <= 2, replies
    assert code == 4429
    assert Message.objects.filter(room=room).count() == acks + sum(
        r["type"] == "ack" for r in replies
    )
    assert_clean_log(server_a)
    assert_clean_log(server_b)


# --- Oversized frames and too many sockets --------------------------------------------------------


def test_an_oversized_frame_is_refused_and_the_socket_survives(start_server, user):
    server = start_server(CHAT_MAX_FRAME_BYTES=2048)
    room = factories.make_room(user)
    token = factories.make_token(user)

    async def refused(sock, frame):
        # The server does not parse an oversized frame, so its error cannot echo the ref.
        await sock.send(frame)
        pong, before = await sock.ping()
        assert pong["type"] == "pong"
        return [f for f in before if f["type"] == "error"][0]

    async def scenario():
        sock = await Socket.open(server, token=token)
        reply = await refused(
            sock,
            {
                "type": "message.send",
                "room": room.pk,
                "body": "x" * 3000,
                "client_id": str(uuid.uuid4()),
                "ref": "big-send",
            },
        )
        big = await refused(sock, {"type": "ping", "pad": "y" * 100_000, "ref": "big-ping"})
        pong, _ = await sock.ping()
        await sock.close()
        return reply, big, pong

    reply, big, pong = run(scenario())
    assert (reply["type"], reply["code"]) == ("error", "too_large")
    assert (big["type"], big["code"]) == ("error", "too_large")
    assert pong["type"] == "pong"
    assert not Message.objects.filter(room=room).exists()
    assert_clean_log(server)


def test_too_many_sockets_per_user_are_refused_across_processes(start_server, user):
    server_a, server_b = (
        start_server(CHAT_MAX_SOCKETS_PER_USER=2),
        start_server(CHAT_MAX_SOCKETS_PER_USER=2),
    )
    token = factories.make_token(user)

    async def scenario():
        first = await Socket.open(server_a, token=token)
        second = await Socket.open(server_b, token=token)
        third = await Socket.open(server_a, token=token, expect_hello=False)
        code, frames = await third.wait_closed()
        alive = [(await s.ping())[0]["type"] for s in (first, second)]
        await first.close()
        # A closed socket frees its place (the count follows disconnects, promptly).
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            fourth = await Socket.open(server_b, token=token, expect_hello=False)
            hello = await fourth.recv()
            if hello["type"] == "hello" or asyncio.get_running_loop().time() > deadline:
                break
            await fourth.close()
            await asyncio.sleep(0.5)
        await fourth.close()
        await second.close()
        return code, frames, alive, hello

    code, frames, alive, hello = run(scenario())
    assert 4000 <= code < 5000, code
    assert not [f for f in frames if f["type"] == "hello"], frames
    assert [f["code"] for f in frames if f["type"] == "error"][:1] in (
        ["rate_limited"],
        ["forbidden"],
    ), frames
    assert alive == ["pong", "pong"]
    assert hello["type"] == "hello", hello


# --- Logout closes that session's sockets ----------------------------------------------------------


def test_logging_out_closes_that_sessions_sockets_only(start_server, user):
    server_a, server_b = start_server(), start_server()
    cookie_1, cookie_2 = session_cookie(user), session_cookie(user)
    token = factories.make_token(user)
    csrf = secrets.token_hex(16)

    async def scenario():
        doomed = [
            await Socket.open(server_a, cookie=cookie_1),
            await Socket.open(server_b, cookie=cookie_1),
        ]
        kept = [
            await Socket.open(server_a, cookie=cookie_2),
            await Socket.open(server_b, token=token),
        ]
        status, _ = await asyncio.to_thread(
            _http_form,
            server_a,
            "/logout/",
            f"{cookie_1}; csrftoken={csrf}",
            {"csrfmiddlewaretoken": csrf},
        )
        codes = [(await s.wait_closed(15))[0] for s in doomed]
        alive = [(await s.ping())[0]["type"] for s in kept]
        for s in kept:
            await s.close()
        return status, codes, alive

    status, codes, alive = run(scenario())
    assert status in (200, 302), status
    assert codes == [4401, 4401], codes
    assert alive == ["pong", "pong"]


def _http_form(server, path, cookie, form):
    from urllib.parse import urlencode

    request = urllib.request.Request(
        server.http_url + path,
        data=urlencode(form).encode(),
        method="POST",
        headers={
            "Cookie": cookie,
            "Content-Type": "application/x-www-form-urlencoded",
            "Origin": server.http_url,
            "Referer": server.http_url + "/",
        },
    )

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=15) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


# --- CSRF and the admin ----------------------------------------------------------------------------


def test_rest_writes_with_session_auth_need_the_csrf_token(db, user):
    browser = APIClient(enforce_csrf_checks=True)
    browser.force_login(user)
    forged = browser.post("/api/rooms/", {"name": "forged"}, format="json")
    assert forged.status_code == 403, forged.content
    assert not Room.objects.filter(name="forged").exists()

    # What the page's script does: send back the CSRF cookie's value in X-CSRFToken.
    secret = secrets.token_hex(16)
    browser.cookies["csrftoken"] = secret
    wrong = browser.post(
        "/api/rooms/", {"name": "forged"}, format="json", HTTP_X_CSRFTOKEN=secrets.token_hex(16)
    )
    assert wrong.status_code == 403, wrong.content
    made = browser.post(
        "/api/rooms/",
        {"name": "with csrf"},
        format="json",
        HTTP_X_CSRFTOKEN=secret,
        HTTP_ORIGIN="http://testserver",
    )
    assert made.status_code == 201, made.content

    api = APIClient(enforce_csrf_checks=True)  # token clients are not browsers: no CSRF needed
    api.credentials(HTTP_AUTHORIZATION=f"Token {factories.make_token(user)}")
    assert api.post("/api/rooms/", {"name": "by token"}, format="json").status_code == 201


def test_admin_moderation_actions_are_refused_to_staff_who_are_not_moderators(db):
    owner, author = factories.make_user(), factories.make_user()
    room = factories.make_room(owner, members=[author])
    message = Message.objects.get(pk=factories.send(room, author, "keep me").envelope["data"]["id"])
    staff = factories.make_user(is_staff=True)
    staff.user_permissions.add(
        Permission.objects.get(codename="view_message"),
        Permission.objects.get(codename="view_membership"),
    )
    events_before = Event.objects.filter(room=room).count()
    admin = Client()
    admin.force_login(staff)

    listing = admin.get("/admin/messaging/message/")
    assert listing.status_code == 200
    assert b"delete_messages" not in listing.content  # the action is not even offered
    for data in (
        {"action": "delete_messages", "_selected_action": [message.pk]},
        {
            "action": "delete_messages",
            "_selected_action": [message.pk],
            "apply": "1",
            "reason": "staff overreach",
        },
    ):
        admin.post("/admin/messaging/message/", data)
    membership = room.memberships.get(user=author)
    for action in ("ban", "mute", "kick", "make_moderator"):
        admin.post(
            "/admin/rooms/membership/",
            {
                "action": action,
                "_selected_action": [membership.pk],
                "apply": "1",
                "duration": "600",
            },
        )
    admin.post(
        "/admin/rooms/room/",
        {"action": "archive_rooms", "_selected_action": [room.pk], "apply": "1"},
    )
    message.refresh_from_db()
    membership.refresh_from_db()
    assert message.deleted_at is None
    assert membership.is_active and membership.banned_at is None and membership.muted_until is None
    assert membership.role == "member"
    room.refresh_from_db()
    assert room.archived_at is None
    assert Event.objects.filter(room=room).count() == events_before
