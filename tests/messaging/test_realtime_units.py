"""Pure pieces of the real-time layer: frames, the token bucket rule, the presence rule."""

import asyncio
import json
import uuid

import pytest

from apps.messaging.realtime import frame_payload, text_frame
from apps.users.presence import LocalPresence


def test_text_frame_lengths_round_trip():
    for size in (0, 125, 126, 65535, 65536, 70000):
        payload = b"x" * size
        frame = text_frame(payload)
        assert frame[0] == 0x81
        assert frame_payload(frame) == payload
        assert len(frame) - size == (2 if size < 126 else 4 if size < 65536 else 10)


def test_presence_rule_across_sockets_and_expiry():
    store = LocalPresence()
    run = asyncio.run
    assert run(store.connect(7, "a", "online", 60, 2)) == (1, "online", 1)
    assert run(store.connect(7, "b", "away", 60, 2)) == (0, "online", 2)
    assert run(store.connect(7, "c", "online", 60, 2))[0] == -1  # socket limit
    assert run(store.refresh([(7, "a", "away")], 60)) == [(7, "away")]
    assert run(store.disconnect(7, "a")) is None  # b is still there, away
    assert run(store.refresh([(7, "b", "away")], -1)) == []  # b expires now
    assert run(store.sweep()) == [(7, "offline")]
    assert run(store.status(7)) == "offline"


async def _presence_scenario(store, u, v):
    """The presence rule step by step (users u and v); returns every answer."""
    out = [
        await store.connect(u, "a", "online", 60, 2),
        await store.connect(u, "b", "away", 60, 2),
        (await store.connect(u, "c", "online", 60, 2))[0],  # socket limit
        # one refresh for several sockets of several users, one of them new
        await store.refresh([(u, "a", "away"), (u, "b", "away"), (v, "x", "online")], 60),
        await store.disconnect(u, "a"),
        await store.refresh([(u, "b", "away")], -1),  # b expires now
        [change for change in await store.sweep() if change[0] in (u, v)],
        await store.status(u),
        await store.status(v),
        await store.disconnect(v, "x"),
    ]
    # A refresh of more users than one script call takes (200), two sockets each.
    many = [(w, f"s{w}-{k}", "online" if w % 3 else "away")
            for w in range(v + 1, v + 451) for k in range(2)]
    out.append(sorted(await store.refresh(many, 60)))
    out.append(await store.refresh(many, 60))  # nothing changed
    out.append(sorted(filter(None, await asyncio.gather(
        *(store.disconnect(w, sock) for w, sock, _ in many)))))
    return out


@pytest.mark.services
def test_presence_rule_in_redis_is_the_local_rule():
    from apps.core.redis import async_client
    from apps.users.presence import RedisPresence

    u, v = (uuid.uuid4().int % 10**12 * 1000 + 10**15 for _ in range(2))
    local = asyncio.run(_presence_scenario(LocalPresence(), u, v))
    many = range(v + 1, v + 451)
    assert local == [
        (1, "online", 1), (0, "online", 2), -1, [(u, "away"), (v, "online")], None, [],
        [(u, "offline")], "offline", "online", "offline",
        [(w, "online" if w % 3 else "away") for w in many], [], ["offline"] * 450,
    ]

    async def in_redis():
        client = async_client()
        try:
            return await _presence_scenario(RedisPresence(client), u, v)
        finally:
            await client.aclose()

    assert asyncio.run(in_redis()) == local


class RecordingSocket:
    """Stands in for chatproject.serve.SocketExtension: keeps what the app writes."""

    def __init__(self):
        self.frames = []
        self.on_text = None

    def write(self, frame, count=True):
        self.frames.append(frame)
        return True

    def backlog(self):
        return 0, 0


def _socket_and_connection():
    from apps.messaging.realtime import Connection

    ext = RecordingSocket()
    conn = Connection(user_id=1, username="u", send=None, ext=ext)
    conn.last_active = 0.0
    return ext, conn


PINGS = [
    b'{"type":"ping"}',
    b'{"type":"ping","status":"online"}',
    b'{"type":"ping","status":"away"}',
    b'{"ref":"r1","type":"ping"}',
    b'{"type": "ping", "ref": "r2", "status": "away", "extra": [1, 2]}',
    '{"type":"ping","ref":"é ✓"}'.encode(),
    b'{"type":"ping","status":7,"ref":null}',
]
NOT_PINGS = [
    b'{"type":"ping","ref":5}',  # invalid ref: the consumer answers with an error
    b'{"type":"ping","ref":"' + b"x" * 201 + b'"}',
    b'["ping"]',
    b'{"type":"pong","note":"ping"}',
    b'{"type":"ping"',
    b'{"type":"subscribe","room":1,"ref":"ping"}',
    b'\xff{"type":"ping"}',
]


def test_the_fast_ping_path_answers_exactly_as_the_consumer():
    from apps.messaging.consumers import ChatConsumer

    for payload in PINGS:
        fast_ext, fast = _socket_and_connection()
        fast.waiting = True
        assert fast_ext.on_text == fast.ping_now
        assert fast.ping_now(payload) is True, payload
        slow_ext, slow = _socket_and_connection()
        consumer = ChatConsumer()
        consumer.conn = slow
        asyncio.run(consumer.frame(payload.decode(), None))
        assert len(fast_ext.frames) == 1
        assert fast_ext.frames == slow_ext.frames, payload
        assert fast.status_hint == slow.status_hint, payload
        assert (fast.last_active > 0) == (slow.last_active > 0), payload
        reply = json.loads(frame_payload(fast_ext.frames[0]))
        assert reply == {"type": "pong", "ref": json.loads(payload).get("ref")}


def test_the_fast_ping_path_leaves_everything_else_to_the_consumer():
    for payload in NOT_PINGS:
        ext, conn = _socket_and_connection()
        conn.waiting = True
        assert conn.ping_now(payload) is False, payload
        assert ext.frames == [] and conn.status_hint is None and conn.last_active == 0.0
    ext, conn = _socket_and_connection()
    assert conn.ping_now(b'{"type":"ping"}') is False  # busy with a frame (not waiting)
    conn.waiting, conn.closing = True, True
    assert conn.ping_now(b'{"type":"ping"}') is False  # closing
    assert ext.frames == []
