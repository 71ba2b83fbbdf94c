"""The process hub over real sockets: presence, heartbeats, slow clients, lost channel-layer
messages and graceful shutdown (a daphne ServerProcess, PostgreSQL and Redis)."""

import signal
import socket
import time
import uuid

import pytest
from websockets.exceptions import ConnectionClosed

from apps.rooms import services as rooms
from apps.rooms.models import Room
from tests import factories
from tests.support.processes import ServerProcess
from tests.support.wsclient import WS

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]


def presence_of(client, user, status, timeout=15):
    return client.seen(
        lambda f: (
            f.get("type") == "presence.changed"
            and f["data"]["user"]["id"] == user.pk
            and f["data"]["status"] == status
        ),
        timeout,
    )


def test_presence_online_away_offline_across_sockets(start_server, user, other_user, room):
    rooms.room_join(room=room, user=other_user)
    server = start_server(CHAT_HEARTBEAT_SECONDS=2)
    watcher = server.open(user)
    watcher.subscribe(room.pk)
    first = server.open(other_user)
    first.hello()
    online = presence_of(watcher, other_user, "online")
    assert online["room"] == room.pk and online["seq"] is None
    second = server.open(other_user)
    second.hello()
    first.request("ping", status="away")
    second.request("ping", status="away")
    presence_of(watcher, other_user, "away")  # seen at the next heartbeat sweep
    first.close()
    second.request("ping")
    second.close()
    presence_of(watcher, other_user, "offline")
    statuses = [
        f["data"]["status"]
        for f in watcher.frames
        if f.get("type") == "presence.changed" and f["data"]["user"]["id"] == other_user.pk
    ]
    assert statuses == ["online", "away", "offline"]  # one event per change, not per socket


def test_silent_socket_is_closed_4408_and_a_pinging_one_stays(start_server, user, room):
    server = start_server(CHAT_HEARTBEAT_SECONDS=1)
    silent, alive = server.open(user), server.open(user)
    silent.subscribe(room.pk)
    alive.subscribe(room.pk)
    started = time.monotonic()
    while time.monotonic() - started < 4:
        alive.request("ping")
        time.sleep(0.4)
    assert silent.wait_closed(timeout=5) == 4408
    assert alive.request("ping")["type"] == "pong"
    factories.send(room, user, body="still here")
    alive.seen(lambda f: f.get("data", {}).get("body") == "still here")


def slow_socket(url, token):
    """A client with a tiny receive window that will not read: its data backs up at the server."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    host, port = url.split("/")[2].split(":")
    sock.connect((host, int(port)))
    return WS(url, token=token, sock=sock, max_queue=2)


def test_slow_client_is_dropped_without_slowing_the_others(start_server, user, room):
    server = start_server(
        CHAT_SEND_QUEUE_LIMIT=20, CHAT_SEND_BUFFER_BYTES=65536, CHAT_SOCKET_SEND_BUFFER=16384
    )
    fast = server.open(user)
    fast.subscribe(room.pk)
    slow = slow_socket(server.ws_url, factories.make_token(user))
    slow.subscribe(room.pk)
    first = Room.objects.get(pk=room.pk).last_seq + 1
    count = 120  # ~480 KB: more than the kernel buffers plus the 64 KiB allowed backlog
    for i in range(count):
        factories.send(room, user, body=f"{i} " + "x" * 3900)
        if i % 20 == 0:
            fast.request("ping")
    fast.wait_seq(room.pk, first + count - 1, timeout=30)
    assert fast.seqs(room.pk) == list(range(first, first + count))
    # Now the slow client reads: it finds part of the stream, then the connection is gone.
    with pytest.raises((ConnectionClosed, OSError)):
        while True:
            slow.recv(timeout=10)
    received = slow.seqs(room.pk)
    assert len(received) < count and received == list(range(first, first + len(received)))
    # It resumes on a new socket with since and ends with exactly the full sequence.
    resumed = server.open(user)
    resumed.subscribe(room.pk, since=received[-1] if received else first - 1)
    assert received + resumed.seqs(room.pk) == list(range(first, first + count))


def test_events_lost_by_the_channel_layer_are_recovered_from_the_log(start_server, user, room):
    # This server listens on other channel-layer groups than the ones the test process sends
    # to: every live message is lost for it, so only the event-log check can bring them.
    # (Under this run's prefix, so the run's clean-up removes its keys.)
    from django.conf import settings

    server = start_server(
        CHANNELS_PREFIX=f"{settings.CHANNELS_PREFIX}lost{uuid.uuid4().hex[:8]}",
        CHAT_GAP_CHECK_SECONDS=1,
    )
    client = server.open(user)
    client.subscribe(room.pk, since=0)
    before = Room.objects.get(pk=room.pk).last_seq
    for i in range(5):
        factories.send(room, user, body=f"lost {i}")
    client.wait_seq(room.pk, before + 5, timeout=20)
    assert client.seqs(room.pk) == list(range(1, before + 6))


def test_sigterm_closes_sockets_with_1012_and_exits(start_server, user, room):
    server = start_server(CHAT_SHUTDOWN_GRACE_SECONDS=3)
    client = server.open(user)
    client.subscribe(room.pk)
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    assert client.wait_closed(timeout=10) == 1012
    server.proc.wait(10)
    assert server.proc.returncode == 0
    assert time.monotonic() - started < 3 + 5


def test_redis_restart_loses_nothing_and_live_delivery_resumes(child_env, user, other_user, room):
    from tests.support.services import RedisServer

    rooms.room_join(room=room, user=other_user)
    redis = RedisServer().start()
    # No periodic log check here: what Redis forgot must come back by the gap rule alone.
    server = ServerProcess(
        dict(child_env, REDIS_URL=redis.url, CHAT_GAP_CHECK_SECONDS="600")
    ).start()
    watcher = sender = None
    try:
        watcher = WS(server.ws_url, token=factories.make_token(user))
        sender = WS(server.ws_url, token=factories.make_token(other_user))
        watcher.subscribe(room.pk, since=0)
        before = sender.send_message(room.pk, body="before")["event"]["seq"]
        watcher.wait_seq(room.pk, before)
        redis.stop()
        during = sender.send_message(room.pk, body="while Redis is down")
        assert during["type"] == "ack"  # committed: the event log has it
        redis = RedisServer(port=redis.port).start()  # empty: no groups, no messages
        deadline = time.monotonic() + 20
        after = None
        while after is None or not any(s >= after for s in watcher.seqs(room.pk)):
            assert time.monotonic() < deadline, watcher.frames[-5:]
            after = sender.send_message(room.pk, body="after")["event"]["seq"]
            try:
                watcher.wait_seq(room.pk, after, timeout=2)
            except TimeoutError:
                pass
        assert watcher.seqs(room.pk) == list(range(1, watcher.seqs(room.pk)[-1] + 1))
        bodies = [e["data"].get("body") for e in watcher.events(room.pk)]
        assert "while Redis is down" in bodies and bodies.count("before") == 1
    finally:
        for client in (watcher, sender):
            if client is not None:
                client.close()
        server.stop()
        redis.stop()


def masked_frame(payload: bytes, *, opcode=0x1, fin=True) -> bytes:
    """A client-to-server WebSocket frame (RFC 6455 §5.2), masked, payload under 126 bytes."""
    mask = bytes((1, 2, 3, 4))
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes(((0x80 if fin else 0) | opcode, 0x80 | len(payload))) + mask + body


def test_pings_are_answered_in_order_however_they_arrive(server, user, room):
    client = WS(server.ws_url, token=factories.make_token(user))
    client.hello()
    # A ping behind a frame still in progress waits for that frame's reply.
    client.send(type="subscribe", room=room.pk, ref="s")
    client.send(type="ping", ref="p")
    replies = [client.until(lambda f: f.get("ref") in ("s", "p")) for _ in range(2)]
    assert [(f["type"], f["ref"]) for f in replies] == [("subscribed", "s"), ("pong", "p")]
    # Two frames in one read, a ping in two fragments, a plain one alone in its read (the
    # server's short path), one without ref: the same pongs, in order.
    raw = client.ws.socket
    raw.sendall(
        masked_frame(b'{"type":"ping","ref":"a"}') + masked_frame(b'{"type":"ping","ref":"b"}')
    )
    raw.sendall(
        masked_frame(b'{"type":"ping",', fin=False) + masked_frame(b'"ref":"c"}', opcode=0x0)
    )
    raw.sendall(masked_frame(b'{"type":"ping","ref":"d","status":"away"}'))
    time.sleep(0.2)
    raw.sendall(masked_frame(b'{"type":"ping"}'))
    replies = [client.until(lambda f: f["type"] in ("pong", "error")) for _ in range(5)]
    assert replies == [{"type": "pong", "ref": ref} for ref in ("a", "b", "c", "d", None)]
    # Not a valid ping: the consumer's answer.
    raw.sendall(masked_frame(b'{"type":"ping","ref":7}'))
    assert client.until(lambda f: f["type"] in ("pong", "error"))["code"] == "invalid"
    assert client.request("ping")["type"] == "pong"
