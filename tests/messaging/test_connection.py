"""One socket as the hub sees it (apps.messaging.connection): the fast ping path, the backlog
limits, closing."""

import asyncio
import json

from apps.core.wsframe import frame_payload
from apps.messaging.connection import Connection, corked


class RecordingSocket:
    """Stands in for chatproject.serve.SocketExtension: keeps what the app writes."""

    def __init__(self):
        self.frames = []
        self.writes = []  # the frames of each write, as written together
        self.on_text = None

    def backlog(self):
        return 0, 0

    def send(self, frames):
        self.writes.append(list(frames))
        self.frames.extend(frames)
        return self.backlog()


def _socket_and_connection():
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
        assert fast_ext.on_text == fast.text_now
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


class BackloggedSocket(RecordingSocket):
    """A daphne socket whose client stopped reading: every frame stays unsent."""

    def __init__(self):
        super().__init__()
        self.aborted = False
        self.closed_with = None

    def backlog(self):
        return len(self.frames), sum(len(f) for f in self.frames)

    def abort(self):
        self.aborted = True

    def close(self, code):
        self.closed_with = code


def test_a_socket_over_its_frame_backlog_is_dropped_with_1013(settings):
    settings.CHAT_SEND_QUEUE_LIMIT = 5

    async def scenario():
        ext = BackloggedSocket()
        conn = Connection(user_id=1, username="u", send=None, ext=ext)
        results = [conn.write(b"\x81\x01x") for _ in range(7)]
        await asyncio.sleep(0.05)  # the close task runs
        return ext, conn, results

    ext, conn, results = asyncio.run(scenario())
    assert results == [True] * 5 + [False, False]  # the 6th passes the limit; then closing
    assert conn.closing and ext.aborted and ext.closed_with == 1013
    assert len(ext.frames) == 6


def test_a_socket_over_its_byte_backlog_is_dropped(settings):
    settings.CHAT_SEND_BUFFER_BYTES = 1000

    async def scenario():
        ext = BackloggedSocket()
        conn = Connection(user_id=1, username="u", send=None, ext=ext)
        small = conn.write(b"x" * 600)
        big = conn.write(b"x" * 600)
        await asyncio.sleep(0.05)
        return ext, conn, small, big

    ext, conn, small, big = asyncio.run(scenario())
    assert small and not big and conn.closing and ext.closed_with == 1013


def test_without_the_daphne_hook_frames_go_through_a_bounded_queue(settings):
    settings.CHAT_SEND_QUEUE_LIMIT = 3

    async def scenario():
        sent, release = [], asyncio.Event()

        async def send(message):
            await release.wait()  # the ASGI server takes nothing until released
            sent.append(message)

        conn = Connection(user_id=1, username="u", send=send, ext=None)
        first = [conn.write_json({"n": n}) for n in range(3)]
        await asyncio.sleep(0.01)  # the writer took one frame and waits in send
        assert conn.flushed() == 1 and conn.position() == 3  # one taken by the writer
        fourth = conn.write_json({"n": 3})
        fifth = conn.write_json({"n": 4})  # one over the limit: too slow
        release.set()
        await asyncio.sleep(0.05)
        return first, fourth, fifth, sent, conn

    first, fourth, fifth, sent, conn = asyncio.run(scenario())
    assert first == [True] * 3 and fourth and not fifth and conn.closing
    assert sent[-1] == {"type": "websocket.close", "code": 1013}


def test_corked_writes_go_out_once_per_socket_in_order_at_the_end():
    a, conn_a = _socket_and_connection()
    b, conn_b = _socket_and_connection()
    c, conn_c = _socket_and_connection()
    with corked():
        conn_a.write(b"1")
        conn_b.write(b"x")
        with corked():  # nested: joins the outer block
            conn_a.write(b"2")
        conn_c.write(b"gone")
        conn_c.closing = True  # closed before the end of the block: gets nothing
        conn_a.write(b"3")
        assert a.frames == b.frames == c.frames == []  # nothing written inside the block
    assert a.frames == [b"1", b"2", b"3"] and a.writes == [[b"1", b"2", b"3"]]  # one write
    assert b.frames == [b"x"] and b.writes == [[b"x"]]
    assert c.frames == []
    conn_a.write(b"4")  # after the block: written at once
    assert a.frames[-1] == b"4"


def test_a_corked_batch_over_the_backlog_limit_drops_the_socket(settings):
    settings.CHAT_SEND_QUEUE_LIMIT = 5

    async def scenario():
        ext = BackloggedSocket()
        conn = Connection(user_id=1, username="u", send=None, ext=ext)
        with corked():
            for _ in range(7):
                conn.write(b"\x81\x01x")
        await asyncio.sleep(0.05)
        return ext, conn

    ext, conn = asyncio.run(scenario())
    assert len(ext.frames) == 7 and conn.closing and ext.aborted and ext.closed_with == 1013
