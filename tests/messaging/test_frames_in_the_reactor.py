"""message.send frames taken in the reactor (chatproject.serve.whole_text_frames ->
Connection.text_now -> ChatConsumer.send_now), on a real server over a raw socket: several
frames in one TCP write, a frame split across writes, frames that must go the consumer's way
(a ping barrier, escapes, a bad frame) in between; every answer comes in frame order, and
the sends commit in the order they were written."""

import json
import time
import uuid

import pytest

from apps.messaging.models import Message
from tests import factories
from tests.support.processes import assert_clean_log, metric
from tests.support.rawws import RawSocket, client_frame

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.services]


def send_frame(room, ref, body):
    frame = {"type": "message.send", "room": room, "ref": ref, "body": body}
    return client_frame(json.dumps(dict(frame, client_id=str(uuid.uuid4()))).encode())


def sends_in_reactor(server) -> float:
    return metric(server, "chat_ws_sends_in_reactor_total")


def test_frames_in_one_write_and_across_writes_are_answered_in_order(start_server):
    server = start_server()
    user = factories.make_user()
    room = factories.make_room(user)
    sock = RawSocket(server, token=factories.make_token(user), rcvbuf=None)
    assert json.loads(sock.recv_frame()[1])["type"] == "hello"
    head = room.last_seq
    before = sends_in_reactor(server)
    escaped = json.dumps(
        {"type": "message.send", "room": room.pk, "ref": "s3", "body": "caf\u00e9"},
        ensure_ascii=True,  # "\u00e9": the consumer checks escapes itself
    )
    burst = b"".join(
        [
            send_frame(room.pk, "s1", "short"),
            send_frame(room.pk, "s2", "long " + "x" * 300),  # a 16-bit length
            client_frame(b'{"type":"ping","ref":"barrier"}'),
            client_frame(
                escaped.replace('"ref"', '"client_id":"%s","ref"' % uuid.uuid4()).encode()
            ),
            client_frame(b'{"type":"message.send","room":"seven","ref":"bad"}'),
            send_frame(room.pk, "s4", "after the bad one"),
        ]
    )
    sock.sock.sendall(burst)
    split = send_frame(room.pk, "s5", "split " + "y" * 200)
    for part in (split[:3], split[3:9], split[9:]):  # inside the header, the mask, the payload
        sock.sock.sendall(part)
        time.sleep(0.05)
    replies = []
    while len(replies) < 7:
        opcode, payload = sock.recv_frame()
        if opcode == 0x1:
            frame = json.loads(payload)
            if frame.get("ref") is not None:
                replies.append(frame)
    sock.close()
    order = [(r["ref"], r["type"]) for r in replies]
    # Acks in frame order; the ping's pong after the acks of the sends before it, and before
    # those after it. (A send refused before it is queued, like the bad one, is answered at
    # once: it may overtake the ack of an earlier send still in its batch.)
    assert [ref for ref, kind in order if kind == "ack"] == ["s1", "s2", "s3", "s4", "s5"]
    assert order[:3] == [("s1", "ack"), ("s2", "ack"), ("barrier", "pong")], order
    assert ("bad", "error") in order
    acked = [r for r in replies if r["type"] == "ack"]
    assert [r["event"]["seq"] for r in acked] == list(range(head + 1, head + 6))
    bodies = Message.objects.filter(room=room).order_by("seq").values_list("body", flat=True)
    assert list(bodies) == [
        "short",
        "long " + "x" * 300,
        "café",
        "after the bad one",
        "split " + "y" * 200,
    ]
    assert next(r for r in replies if r["ref"] == "bad")["code"] == "invalid"
    # s1 and s2 at least were taken in the reactor; s3 (escapes) and the bad one were not.
    assert 2 <= sends_in_reactor(server) - before <= 4
    assert_clean_log(server)
