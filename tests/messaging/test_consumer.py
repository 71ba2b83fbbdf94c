"""The WebSocket consumer over real sockets: a daphne ServerProcess, PostgreSQL and Redis."""

import json
import time
import uuid

import pytest
from django.test import Client
from websockets.exceptions import ConnectionClosed, InvalidStatus

from apps.messaging.models import Message
from apps.rooms import services as rooms
from apps.rooms.models import Room
from tests import factories
from tests.support.processes import ServerProcess, metric, subprocess_env
from tests.support.wsclient import WS

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def servers(django_db_setup, django_db_blocker):
    """Two servers for the module (starting one per test would cost seconds each): `plain`
    with the default settings, `tight` with small limits, to reach each in a few frames."""
    with django_db_blocker.unblock():
        env = subprocess_env()
    tight = dict(
        env,
        CHAT_RATE_LIMIT_MESSAGES="3",
        CHAT_RATE_LIMIT_PER_SECOND="0.2",
        CHAT_RATE_LIMIT_STRIKES="3",
        CHAT_MAX_ROOMS_PER_SOCKET="2",
        CHAT_MAX_SOCKETS_PER_USER="2",
        CHAT_REPLAY_LIMIT="5",
        CHAT_MAX_FRAME_BYTES="2048",
    )
    procs = {"plain": ServerProcess(env).start(), "tight": ServerProcess(tight).start()}
    yield procs
    for proc in procs.values():
        proc.stop()


def _sockets(proc):
    sockets = []

    def open_socket(user=None, **kwargs):
        token = factories.make_token(user) if user is not None else None
        client = WS(proc.ws_url, token=token, **kwargs)
        sockets.append(client)
        return client

    yield open_socket
    for client in sockets:
        client.close()


@pytest.fixture
def ws(servers, transactional_db):
    yield from _sockets(servers["plain"])


@pytest.fixture
def tight(servers, transactional_db):
    yield from _sockets(servers["tight"])


@pytest.fixture
def server(servers):
    return servers["plain"]


def head_of(room):
    return Room.objects.get(pk=room.pk).last_seq


def test_hello_then_subscribe_replays_since_and_goes_live(ws, user, room):
    for i in range(3):
        factories.send(room, user, body=f"old {i}")
    client = ws(user)
    hello = client.hello()
    assert hello["user"] == {"id": user.pk, "username": user.username}
    assert hello["heartbeat"] > 0
    head = head_of(room)

    subscribed = client.subscribe(room.pk, since=head - 2)
    assert subscribed == {
        "type": "subscribed",
        "ref": subscribed["ref"],
        "room": room.pk,
        "last_seq": head,
        "truncated": False,
        "head": head,
        "history_start": 1,
    }
    assert client.seqs(room.pk) == [head - 1, head]

    factories.send(room, user, body="live")
    client.wait_seq(room.pk, head + 1)
    live = client.events(room.pk)[-1]
    assert live["type"] == "message.created" and live["data"]["body"] == "live"
    assert client.seqs(room.pk) == [head - 1, head, head + 1]


def test_subscribe_without_since_sends_no_replay(ws, user, room):
    factories.send(room, user)
    client = ws(user)
    reply = client.subscribe(room.pk)
    assert reply["last_seq"] == head_of(room) and client.events(room.pk) == []


def test_session_cookie_authenticates(ws, user):
    browser = Client()
    browser.force_login(user)
    client = ws(session=browser.cookies["sessionid"].value)
    assert client.hello()["user"]["id"] == user.pk


@pytest.mark.parametrize("token", [None, "not-a-real-token"])
def test_unauthenticated_socket_gets_error_then_4401(ws, token):
    client = ws(headers={"Authorization": f"Token {token}"} if token else None)
    error = client.recv()
    assert error["type"] == "error" and error["code"] == "unauthenticated"
    assert client.wait_closed() == 4401


@pytest.mark.parametrize("origin", [None, "http://evil.example"])
def test_handshake_without_an_allowed_origin_is_refused(server, user, origin):
    with pytest.raises(InvalidStatus) as refused:
        WS(server.ws_url, token=factories.make_token(user), origin=origin)
    assert refused.value.response.status_code == 403


def test_every_action_frame_is_acked_with_the_committed_event(ws, user, other_user, room):
    rooms.room_join(room=room, user=other_user)
    author, watcher = ws(user), ws(other_user)
    author.subscribe(room.pk)
    watcher.subscribe(room.pk)

    assert author.request("ping")["type"] == "pong"
    client_id = str(uuid.uuid4())
    ack = author.send_message(room.pk, body="first", client_id=client_id)
    assert ack["type"] == "ack" and ack["event"]["type"] == "message.created"
    assert ack["event"]["data"]["client_id"] == client_id
    message_id = ack["event"]["data"]["id"]

    edit = author.request("message.edit", message=message_id, body="first, edited")
    assert edit["event"]["type"] == "message.edited"
    added = author.request("reaction.add", message=message_id, emoji="👍")
    assert added["event"]["type"] == "reaction.added"
    removed = author.request("reaction.remove", message=message_id, emoji="👍")
    assert removed["event"]["type"] == "reaction.removed"
    deleted = author.request("message.delete", message=message_id)
    assert deleted["event"]["type"] == "message.deleted"

    read = author.request("read", room=room.pk, seq=deleted["event"]["seq"])
    assert read["event"]["type"] == "receipt.updated"
    assert read["event"]["data"]["last_read_seq"] == deleted["event"]["seq"]
    assert read["event"]["seq"] is None
    again = author.request("read", room=room.pk, seq=1)  # nothing moves: the ack says so
    assert again == {"type": "ack", "ref": again["ref"], "event": None}

    # The watcher saw every committed event of the room, in order, each exactly once.
    acked = [ack, edit, added, removed, deleted]
    watcher.wait_seq(room.pk, deleted["event"]["seq"])
    seen = watcher.events(room.pk)
    assert [e["id"] for e in seen] == [a["event"]["id"] for a in acked]
    assert seen[0] == ack["event"]
    # receipts go to the reader's own sockets only
    author.seen(lambda f: f.get("type") == "receipt.updated")
    assert not any(f.get("type") == "receipt.updated" for f in watcher.frames)


def test_typing_reaches_the_room_throttled(ws, user, other_user, room):
    rooms.room_join(room=room, user=other_user)
    typist, watcher = ws(user), ws(other_user)
    typist.subscribe(room.pk)
    watcher.subscribe(room.pk)
    for _ in range(5):
        typist.send(type="typing", room=room.pk, state=True)
    typist.send(type="typing", room=room.pk, state=False)
    stopped = watcher.until(lambda f: f["type"] == "typing" and f["data"]["state"] is False)
    assert stopped["data"]["user"]["id"] == user.pk and stopped["seq"] is None
    typing = [f for f in watcher.frames if f["type"] == "typing"]
    assert [f["data"]["state"] for f in typing] == [True, False]


def test_unsubscribe_stops_the_room(ws, user, room):
    client = ws(user)
    client.subscribe(room.pk)
    reply = client.request("unsubscribe", room=room.pk)
    assert reply == {"type": "unsubscribed", "ref": reply["ref"], "room": room.pk}
    factories.send(room, user)
    assert client.request("ping")["type"] == "pong"
    time.sleep(0.5)
    client.request("ping")
    assert client.events(room.pk) == []


def test_bad_frames_get_errors_and_the_socket_stays_open(ws, user, other_user, room):
    private = factories.make_room(other_user, kind=Room.Kind.PRIVATE)
    client = ws(user)
    client.hello()
    cases = [
        ("not json", "invalid"),
        ("[1, 2]", "invalid"),
        (json.dumps({"type": "nope", "ref": "a"}), "invalid"),
        (json.dumps({"type": "subscribe", "room": "x", "ref": "b"}), "invalid"),
        (
            json.dumps(
                {
                    "type": "message.send",
                    "room": room.pk,
                    "body": "x",
                    "client_id": "no",
                    "ref": "c",
                }
            ),
            "invalid",
        ),
        (
            json.dumps(
                {
                    "type": "message.send",
                    "room": room.pk,
                    "body": "",
                    "ref": "d",
                    "client_id": str(uuid.uuid4()),
                }
            ),
            "invalid",
        ),
        (json.dumps({"type": "subscribe", "room": private.pk, "ref": "e"}), "not_found"),
        (json.dumps({"type": "subscribe", "room": 987654321, "ref": "f"}), "not_found"),
        (
            json.dumps(
                {
                    "type": "message.send",
                    "room": private.pk,
                    "body": "x",
                    "ref": "g",
                    "client_id": str(uuid.uuid4()),
                }
            ),
            "not_found",
        ),
        (
            json.dumps({"type": "message.edit", "message": 987654321, "body": "x", "ref": "h"}),
            "not_found",
        ),
        (json.dumps({"type": "typing", "room": room.pk, "state": True, "ref": "i"}), "invalid"),
        (json.dumps({"type": "read", "room": room.pk, "seq": -1, "ref": "j"}), "invalid"),
        (
            json.dumps(
                {
                    "type": "message.send",
                    "room": room.pk,
                    "body": "x" * 5000,
                    "ref": "k",
                    "client_id": str(uuid.uuid4()),
                }
            ),
            "too_large",
        ),
        (json.dumps({"type": "ping", "pad": "x" * 70000, "ref": "l"}), "too_large"),
    ]
    for text, code in cases:
        client.send_raw(text)
        error = client.until(lambda f: f["type"] == "error")
        assert error["code"] == code, (text[:80], error)
    client.ws.send(b"\x00binary")
    assert client.until(lambda f: f["type"] == "error")["code"] == "invalid"
    # someone else's message: forbidden to edit; not a member: forbidden to post
    public = factories.make_room(other_user)
    theirs = factories.send(public, other_user)
    error = client.request("message.edit", message=theirs.envelope["data"]["id"], body="mine")
    assert error["code"] == "forbidden"
    error = client.send_message(public.pk)
    assert error["type"] == "error" and error["code"] == "forbidden"
    assert client.request("ping")["type"] == "pong"
    assert not Message.objects.filter(author=user).exists()


def test_resend_after_reconnect_returns_the_same_ack(ws, user, room):
    client_id = uuid.uuid4()
    first = ws(user)
    ack = first.send_message(room.pk, body="once", client_id=client_id)
    first.close()
    second = ws(user)
    again = second.send_message(room.pk, body="once", client_id=client_id)
    assert again["event"] == ack["event"]
    assert Message.objects.filter(author=user, client_id=client_id).count() == 1


def test_resume_after_a_dropped_connection_replays_each_event_once_in_order(ws, user, room):
    client = ws(user)
    client.subscribe(room.pk, since=0)
    for i in range(3):
        client.send_message(room.pk, body=f"before {i}")
    client.wait_seq(room.pk, head_of(room))
    seen = client.seqs(room.pk)
    client.ws.socket.close()  # the network drops; no close handshake
    for i in range(4):
        factories.send(room, user, body=f"meanwhile {i}")
    resumed = ws(user)
    reply = resumed.subscribe(room.pk, since=seen[-1])
    assert reply["last_seq"] == head_of(room) and not reply["truncated"]
    missed = resumed.events(room.pk)
    assert [e["data"]["body"] for e in missed] == [f"meanwhile {i}" for i in range(4)]
    assert seen + resumed.seqs(room.pk) == list(range(1, head_of(room) + 1))


def test_replay_beyond_the_limit_is_truncated(tight, user, room):
    for i in range(8):
        factories.send(room, user, body=str(i))
    head = head_of(room)
    client = tight(user)
    reply = client.subscribe(room.pk, since=0)
    assert reply["truncated"] is True and reply["last_seq"] == 5 and reply["head"] == head
    assert client.seqs(room.pk) == [1, 2, 3, 4, 5]
    factories.send(room, user, body="live")
    client.wait_seq(room.pk, head + 1)
    assert client.seqs(room.pk)[-1] == head + 1  # live events follow the head
    rest = client.subscribe(room.pk, since=5)  # or page GET /api/rooms/{id}/events/?since=5
    assert rest["last_seq"] == 10 and rest["truncated"] is True


def test_ban_takes_effect_mid_stream(ws, user, other_user, room):
    rooms.room_join(room=room, user=other_user)
    victim, watcher = ws(other_user), ws(user)
    victim.subscribe(room.pk)
    watcher.subscribe(room.pk)
    victim.send_message(room.pk, body="before")
    rooms.member_ban(room=room, actor=user, user=other_user, reason="spam")
    banned = victim.seen(lambda f: f["type"] == "member.banned")
    assert banned["data"]["user"]["id"] == other_user.pk
    gone = victim.seen(lambda f: f["type"] == "unsubscribed")
    assert gone["room"] == room.pk and gone["reason"] == "banned"
    factories.send(room, user, body="after the ban")
    watcher.seen(lambda f: f.get("data", {}).get("body") == "after the ban")
    victim.request("ping")
    assert not any(f.get("data", {}).get("body") == "after the ban" for f in victim.frames)
    assert victim.send_message(room.pk, body="still here?")["code"] == "forbidden"
    assert victim.subscribe(room.pk, since=0)["code"] == "forbidden"
    victim.send(type="typing", room=room.pk, state=True)
    assert victim.until(lambda f: f["type"] == "error")["code"] == "invalid"


def test_banned_user_elsewhere_gets_the_ban_on_their_own_sockets(ws, user, other_user, room):
    rooms.room_join(room=room, user=other_user)
    idle = ws(other_user)
    idle.hello()
    idle.request("ping")
    rooms.member_ban(room=room, actor=user, user=other_user)
    banned = idle.seen(lambda f: f["type"] == "member.banned")
    assert banned["room"] == room.pk


def test_an_unbanned_user_gets_member_unbanned_on_their_own_sockets(ws, user, other_user, room):
    rooms.room_join(room=room, user=other_user)
    rooms.member_ban(room=room, actor=user, user=other_user, reason="spam")
    idle, watcher = ws(other_user), ws(user)
    idle.hello()
    idle.request("ping")
    watcher.subscribe(room.pk)
    rooms.member_unban(room=room, actor=user, user=other_user, reason="appeal accepted")
    for client in (idle, watcher):
        unbanned = client.seen(lambda f: f["type"] == "member.unbanned")
        assert unbanned["room"] == room.pk
        assert unbanned["data"] == {
            "user": {"id": other_user.pk, "username": other_user.username},
            "reason": "appeal accepted",
        }
    # Subscribing works again for them (a public room: they may join again).
    assert idle.subscribe(room.pk)["type"] == "subscribed"


def test_an_invited_user_gets_member_joined_on_their_own_sockets(ws, user, other_user):
    private = factories.make_room(user, kind=Room.Kind.PRIVATE)
    idle = ws(other_user)
    idle.hello()
    idle.request("ping")
    rooms.room_invite(room=private, actor=user, user=other_user)
    joined = idle.seen(lambda f: f["type"] == "member.joined")
    assert joined["room"] == private.pk
    assert joined["data"]["user"]["id"] == other_user.pk


def test_rate_limit_then_4429_for_flooding(tight, user, room):
    client = tight(user)
    acks = [client.send_message(room.pk, body=str(i)) for i in range(3)]
    assert all(a["type"] == "ack" for a in acks)
    limited = client.send_message(room.pk, body="too many")
    assert limited["type"] == "error" and limited["code"] == "rate_limited"
    for _ in range(5):
        client.send(type="message.send", room=room.pk, body="flood", client_id=str(uuid.uuid4()))
    assert client.wait_closed() == 4429
    assert Message.objects.filter(author=user).count() == 3


def test_rooms_per_socket_and_sockets_per_user_limits(tight, user):
    first, second, third = (factories.make_room(user) for _ in range(3))
    client = tight(user)
    assert client.subscribe(first.pk)["type"] == "subscribed"
    assert client.subscribe(second.pk)["type"] == "subscribed"
    refused = client.subscribe(third.pk)
    assert refused["type"] == "error" and refused["code"] == "too_large"
    tight(user).hello()
    extra = tight(user)
    error = extra.recv()
    assert error["type"] == "error" and error["code"] == "rate_limited"
    assert extra.wait_closed() == 4429
    with pytest.raises(ConnectionClosed):
        extra.request("ping")


def test_deactivated_account_is_refused_and_closed_4403(ws, user, room):
    client = ws(user)
    client.subscribe(room.pk)
    user.is_active = False
    user.save(update_fields=["is_active"])
    # The deactivation closes the socket at once (apps.users.rights), before it acts again.
    error = client.until(lambda f: f["type"] == "error")
    assert error["code"] == "forbidden" and error["ref"] is None
    assert client.wait_closed() == 4403
    assert not Message.objects.filter(author=user).exists()


def _send_batches(server) -> float:
    """The server's group commits so far (its /metrics: chat_send_batch_size_count)."""
    return metric(server, "chat_send_batch_size_count")


def test_sends_written_back_to_back_share_batches_and_commit_in_their_order(ws, server, user, room):
    """A socket's message.send frames are pipelined: each is queued when it is read, so sends
    written without waiting for acks go out in shared batches, still in the order they were
    written (consecutive seqs, one ack each); a frame of another kind after them (here a
    ping, then a subscribe replaying the room) is answered after all of their acks."""
    client = ws(user)
    client.hello()
    before = _send_batches(server)
    head = head_of(room)
    refs = [f"s{i}" for i in range(12)]
    for i, ref in enumerate(refs):
        client.send(
            type="message.send", ref=ref, room=room.pk, body=f"b2b {i}", client_id=str(uuid.uuid4())
        )
    client.send(type="ping", ref="barrier")
    client.until(lambda f: f.get("ref") == "barrier")
    answered = [f for f in client.frames if f.get("ref") in refs]
    assert [f["type"] for f in answered] == ["ack"] * 12, answered
    assert [f["ref"] for f in answered] == refs  # every ack before the pong, in send order
    assert [f["event"]["seq"] for f in answered] == list(range(head + 1, head + 13))
    assert [f["event"]["data"]["body"] for f in answered] == [f"b2b {i}" for i in range(12)]
    assert list(
        Message.objects.filter(room=room, seq__gt=head)
        .order_by("seq")
        .values_list("body", flat=True)
    ) == [f"b2b {i}" for i in range(12)]
    batches = _send_batches(server) - before
    assert 1 <= batches < 12, batches  # one send at a time would be 12 batches

    # A subscribe right behind more sends replays them all: it waited for their commits.
    for i in range(4):
        client.send(
            type="message.send",
            ref=f"t{i}",
            room=room.pk,
            body=f"then {i}",
            client_id=str(uuid.uuid4()),
        )
    client.send(type="subscribe", ref="sub", room=room.pk, since=head + 12)
    client.until(lambda f: f.get("ref") == "sub")
    replayed = [f["data"]["body"] for f in client.events(room.pk) if f["seq"] > head + 12]
    assert [f.get("type") for f in client.frames if str(f.get("ref", "")).startswith("t")] == [
        "ack"
    ] * 4
    assert replayed == [f"then {i}" for i in range(4)]


def test_refused_sends_among_accepted_ones_are_answered_in_order_before_a_later_frame(
    ws, user, other_user, room
):
    """A pipelined send that its batch refuses gets its error where an ack would have been:
    the answers come in the order the frames were written, and all of them before the answer
    to a later frame of another kind."""
    # user is not a member: sends there are refused
    closed = factories.make_room(other_user, kind=Room.Kind.PRIVATE)
    client = ws(user)
    client.hello()
    rooms = [room.pk, closed.pk, room.pk, closed.pk, room.pk]
    refs = [f"m{i}" for i in range(len(rooms))]
    for ref, room_id in zip(refs, rooms, strict=True):
        client.send(
            type="message.send", ref=ref, room=room_id, body=ref, client_id=str(uuid.uuid4())
        )
    client.send(type="ping", ref="barrier")
    client.until(lambda f: f.get("ref") == "barrier")
    answered = [f for f in client.frames if f.get("ref") in refs + ["barrier"]]
    assert [f["ref"] for f in answered] == refs + ["barrier"], answered
    assert [f["type"] for f in answered[:-1]] == ["ack", "error", "ack", "error", "ack"]
    assert {f["code"] for f in answered if f["type"] == "error"} <= {"forbidden", "not_found"}


def test_a_send_the_batch_finds_from_a_deactivated_account_is_refused_and_closes_4403(
    ws, user, room
):
    """The batch reads the author under the room lock: an account deactivated without the
    rights signal (a raw UPDATE, as another tool might do) is caught there. Its pipelined
    send is refused with `forbidden` and the socket closes with 4403; the send before it,
    already acked, stands."""
    client = ws(user)
    client.hello()
    client.send(
        type="message.send", ref="ok", room=room.pk, body="before", client_id=str(uuid.uuid4())
    )
    client.until(lambda f: f.get("ref") == "ok")
    type(user).objects.filter(pk=user.pk).update(is_active=False)  # no signal, no version bump
    client.send(
        type="message.send", ref="late", room=room.pk, body="after", client_id=str(uuid.uuid4())
    )
    error = client.until(lambda f: f.get("ref") == "late")
    assert error["type"] == "error" and error["code"] == "forbidden", error
    assert client.wait_closed() == 4403
    assert list(Message.objects.filter(author=user).values_list("body", flat=True)) == ["before"]
