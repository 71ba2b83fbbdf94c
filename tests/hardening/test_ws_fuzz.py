"""Property-based fuzzing of WebSocket frames against a real server process (hypothesis).

Every frame -- malformed JSON, wrong types, missing and extra fields, huge and deeply nested
values, invalid UTF-8, binary frames, unknown types, ids of rooms and messages that do not exist
or are not the caller's -- must get a contract error or a valid reply; the socket must survive
(except where the WebSocket protocol itself requires a close: invalid UTF-8 in a text frame);
an error must leave the database untouched; the server must log no unhandled exception.

The example count is bounded: HARDENING_FUZZ_EXAMPLES (default 150).
"""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed

from apps.events.models import Event
from apps.messaging.models import Message, Reaction
from apps.rooms.models import Room
from tests import factories
from tests.support.processes import assert_clean_log
from tests.support.wsclient import Socket, new_ref

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.services]

EXAMPLES = int(os.environ.get("HARDENING_FUZZ_EXAMPLES", "150"))
FRAME_LIMIT = 65536  # CHAT_MAX_FRAME_BYTES, the default the fuzzed server runs with
ERROR_CODES = {
    "invalid",
    "unauthenticated",
    "forbidden",
    "not_found",
    "rate_limited",
    "too_large",
    "unavailable",
}
REPLIES = {
    "subscribe": {"subscribed"},
    "unsubscribe": {"unsubscribed"},
    "message.send": {"ack"},
    "message.edit": {"ack"},
    "message.delete": {"ack"},
    "reaction.add": {"ack"},
    "reaction.remove": {"ack"},
    "read": {"ack"},
    "ping": {"pong"},
    "typing": set(),
}
FIELDS = {
    "subscribe": ["room", "since"],
    "unsubscribe": ["room"],
    "message.send": ["room", "body", "client_id", "reply_to"],
    "message.edit": ["message", "body"],
    "message.delete": ["message"],
    "reaction.add": ["message", "emoji"],
    "reaction.remove": ["message", "emoji"],
    "typing": ["room", "state"],
    "read": ["room", "seq"],
    "ping": [],
}
TARGETS = [
    "own_room",
    "public_room",
    "foreign_room",
    "missing_room",
    "own_message",
    "others_message",
    "foreign_message",
    "missing_message",
]
FOREIGN = {"foreign_room", "foreign_message"}


class Target(str):
    """A placeholder resolved to a real id when the frame is sent."""


class Deep(int):
    """A placeholder for a value nested `self` levels deep (kept short for hypothesis' repr)."""

    def __repr__(self):
        return f"Deep({int(self)})"

    def json(self) -> str:
        opening = "".join("[" if i % 2 else '{"k":' for i in range(self))
        closing = "".join("]" if i % 2 else "}" for i in reversed(range(self)))
        return opening + "0" + closing

    def marker(self) -> str:
        return f"@@deep{int(self)}@@"


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
)
junk = st.recursive(
    scalars,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=12,
)
huge = st.sampled_from(["x" * 5000, "y" * 70_000, "😀" * 3000, "\u0000\u2028\ud7ff" * 10])
deep = st.integers(min_value=50, max_value=3000).map(Deep)
ids = st.sampled_from(TARGETS).map(Target)
good = {
    "body": st.text(min_size=1, max_size=60).filter(str.strip),
    "client_id": st.uuids().map(str),
    "emoji": st.sampled_from(["👍", "🎉", "ok", "a" * 33]),
    "since": st.integers(min_value=0, max_value=5),
    "seq": st.integers(min_value=0, max_value=10),
    "state": st.booleans(),
    # The caller's own room and message most of the time, every other kind of id too.
    "room": st.sampled_from(["own_room"] * 4 + TARGETS).map(Target),
    "message": st.sampled_from(["own_message"] * 3 + TARGETS).map(Target),
    "reply_to": ids,
}
bad = st.one_of(ids, junk, huge, deep)
# Mostly well-formed values, so that whole valid frames (acks, subscriptions) are common too.
value_for = {
    name: st.integers(0, 9).flatmap(lambda n, ok=strategy: ok if n < 7 else bad)
    for name, strategy in good.items()
}


@st.composite
def structured(draw):
    kind = draw(
        st.integers(0, 9).flatmap(
            lambda n: st.sampled_from(list(FIELDS)) if n < 8 else st.text(max_size=20) | junk
        )
    )
    frame = {"type": kind}
    for name in FIELDS.get(kind, ["room", "message", "body"]) if isinstance(kind, str) else []:
        if draw(st.integers(0, 5)):  # usually present, sometimes missing
            frame[name] = draw(value_for[name])
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):  # extra fields
        frame[draw(st.text(max_size=10))] = draw(junk)
    if draw(st.integers(0, 9)):
        frame["ref"] = new_ref("fz")
    else:
        frame["ref"] = draw(junk)
    return frame


raw_text = st.one_of(
    st.text(max_size=200),  # mostly not JSON
    st.sampled_from(
        [
            "",
            "{",
            "}",
            "null",
            "[]",
            "[1,2]",
            '"ping"',
            "1e999",
            '{"type":',
            '{"type": "ping"} trailing',
            '{"type": NaN}',
            "[" * 5000 + "]" * 5000,
            '{"a":' * 3000 + "1" + "}" * 3000,
        ]
    ),
    junk.map(json.dumps),
)
frames = st.one_of(
    structured(),
    structured(),
    structured(),
    raw_text.map(lambda text: ("text", text)),
    st.binary(max_size=200).map(lambda data: ("binary", data)),
    st.sampled_from([b"\xff\xfe", b'{"type": "ping", "x": "\xc3\x28"}', b"\xed\xa0\x80"]).map(
        lambda data: ("bad-utf8", data)
    ),
)


def encode(frame, ids_by_name) -> str:
    """The frame as JSON text, placeholders resolved (deep values spliced in as text)."""
    deep = []

    def resolve(value):
        if isinstance(value, Target):
            return ids_by_name[str(value)]
        if isinstance(value, Deep):
            deep.append(value)
            return value.marker()
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v) for v in value]
        return value

    text = json.dumps(resolve(frame))
    for value in deep:
        text = text.replace(json.dumps(value.marker()), value.json(), 1)
    return text


def db_state(foreign_room_id):
    return {
        "events": Event.objects.count(),
        "messages": Message.objects.count(),
        "reactions": Reaction.objects.count(),
        "edited": Message.objects.filter(edited_at__isnull=False).count(),
        "deleted": Message.objects.filter(deleted_at__isnull=False).count(),
        "foreign": Event.objects.filter(room_id=foreign_room_id).count(),
    }


class Fuzzer:
    """One event loop and one socket, reopened only when a frame legitimately closes it."""

    def __init__(self, server, token, ids_by_name):
        self.server, self.token, self.ids = server, token, ids_by_name
        self.loop = asyncio.new_event_loop()
        self.sock = None
        self.frames_sent = 0
        self.tally: dict[str, int] = {}  # reply kinds, for the printed figures

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    async def socket(self) -> Socket:
        if self.sock is None or self.sock.close_code is not None:
            self.sock = await Socket.open(self.server, token=self.token)
        return self.sock

    async def exchange(self, kind, payload):
        """Send one frame, then a ping; return (frames before the pong, close code or None)."""
        sock = await self.socket()
        self.frames_sent += 1
        try:
            if kind == "binary":
                await sock.conn.send(payload, text=False)
            elif kind == "bad-utf8":
                await sock.conn.send(payload, text=True)
            else:
                await sock.send(payload)
            sync = new_ref("sync")
            await sock.send({"type": "ping", "ref": sync})
            pong, before = await sock.until_ref(sync, timeout=20)
            assert pong["type"] == "pong", pong
            for reply in before:
                key = reply["type"] + (f":{reply['code']}" if reply["type"] == "error" else "")
                self.tally[key] = self.tally.get(key, 0) + 1
            return before, None
        except ConnectionClosed:
            key = f"closed:{sock.close_code}"
            self.tally[key] = self.tally.get(key, 0) + 1
            return [], sock.close_code

    def close(self):
        if self.sock is not None:
            self.run(self.sock.close())
        self.loop.close()


def contains_deep(value) -> bool:
    if isinstance(value, Deep):
        return True
    if isinstance(value, dict):
        return any(contains_deep(v) for v in value.values())
    if isinstance(value, list):
        return any(contains_deep(v) for v in value)
    return False


def check_exchange(frame, kind, replies, close_code, before, after, ids_by_name, wire_bytes=0):
    for reply in replies:
        if reply["type"] == "error":
            assert reply.get("code") in ERROR_CODES, reply
            assert isinstance(reply.get("message"), str), reply
    if kind == "bad-utf8":
        # RFC 6455 8.1: invalid UTF-8 in a text frame fails the connection: daphne (autobahn,
        # failByDrop) drops it (1006) rather than sending 1007. Either way, nothing applied.
        assert close_code in (None, 1006, 1007), close_code
        assert before == after
        return
    assert close_code is None, f"socket closed ({close_code}) after {kind} frame {frame!r:.300}"
    acks = [r for r in replies if r["type"] == "ack"]
    # Frames the server cannot parse (over CHAT_MAX_FRAME_BYTES, or nested past the JSON
    # parser's depth) get an error that cannot echo their ref.
    unparseable = wire_bytes > FRAME_LIMIT or (kind == "json" and contains_deep(frame))
    if kind in ("text", "binary") or unparseable:
        assert [r for r in replies if r["type"] == "error"], (frame, replies)
        assert not acks
    else:
        ref = frame.get("ref")
        ftype = frame.get("type")
        mine = [r for r in replies if isinstance(ref, str) and r.get("ref") == ref]
        expected = REPLIES.get(ftype) if isinstance(ftype, str) else None
        if expected is None:  # unknown or non-string type
            assert [r for r in replies if r["type"] == "error"], (frame, replies)
            assert not acks
        elif isinstance(ref, str):
            assert len(mine) <= 1, mine
            if expected:
                assert mine, f"no reply to {frame!r:.300}: {replies!r:.500}"
            for r in mine:
                assert r["type"] == "error" or r["type"] in expected, (frame, r)
        else:
            assert [r for r in replies if r["type"] in expected | {"error"}] or not expected, (
                frame,
                replies,
            )
        targets = {
            str(frame.get(name))
            for name in ("room", "message", "reply_to")
            if isinstance(frame.get(name), Target)
        }
        if targets & FOREIGN and ftype != "unsubscribe":  # that one answers any id alike
            for r in mine:
                assert r["type"] == "error" and r["code"] in {
                    "invalid",
                    "not_found",
                    "too_large",
                }, ("a foreign private target must look missing", frame, r)
    # Replayed or live events only ever come from rooms the caller may see (`unsubscribed`
    # echoes whatever id it was sent).
    for r in replies:
        assert r.get("room") != ids_by_name["foreign_room"] or r["type"] in (
            "error",
            "unsubscribed",
        ), r
    # Nothing half-applied: no acknowledgement, no change.
    if not acks:
        assert before == after, (frame, replies)
    else:
        assert after["events"] - before["events"] <= len(acks)
    assert after["foreign"] == before["foreign"]


def test_fuzzed_frames_get_a_contract_reply_and_change_nothing_on_error(start_server):
    caller, other, stranger = (factories.make_user() for _ in range(3))
    own_room = factories.make_room(caller, members=[other])
    public_room = factories.make_room(stranger)
    foreign_room = factories.make_room(stranger, kind=Room.Kind.PRIVATE)
    own_message = factories.send(own_room, caller, "mine").envelope["data"]["id"]
    others_message = factories.send(own_room, other, "theirs").envelope["data"]["id"]
    foreign_message = factories.send(foreign_room, stranger, "secret").envelope["data"]["id"]
    ids_by_name = {
        "own_room": own_room.pk,
        "public_room": public_room.pk,
        "foreign_room": foreign_room.pk,
        "missing_room": foreign_room.pk + 10_000,
        "own_message": own_message,
        "others_message": others_message,
        "foreign_message": foreign_message,
        "missing_message": foreign_message + 10_000,
    }
    server = start_server(CHAT_RATE_LIMIT_MESSAGES=10**6, CHAT_RATE_LIMIT_PER_SECOND=10**6)
    fuzzer = Fuzzer(server, factories.make_token(caller), ids_by_name)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
    )
    @given(frame=frames)
    def check(frame):
        if isinstance(frame, tuple):
            kind, payload = frame
            wire = payload
        else:
            kind, payload = "json", frame
            wire = encode(frame, ids_by_name)
        before = db_state(foreign_room.pk)
        replies, close_code = fuzzer.run(fuzzer.exchange(kind, wire))
        after = db_state(foreign_room.pk)
        size = len(wire.encode() if isinstance(wire, str) else wire)
        check_exchange(payload, kind, replies, close_code, before, after, ids_by_name, size)

    try:
        check()
    finally:
        fuzzer.close()
    print(
        f"\nws fuzz: {fuzzer.frames_sent} frames (max_examples={EXAMPLES}), replies: "
        + ", ".join(f"{k} {v}" for k, v in sorted(fuzzer.tally.items()))
    )
    assert fuzzer.frames_sent >= min(EXAMPLES, 50)
    # The room logs stay gapless whatever was thrown at them.
    for room in Room.objects.filter(pk__in=[own_room.pk, public_room.pk, foreign_room.pk]):
        seqs = list(
            Event.objects.filter(room=room, seq__isnull=False)
            .order_by("seq")
            .values_list("seq", flat=True)
        )
        assert seqs == list(range(1, room.last_seq + 1))
    server.stop()
    assert_clean_log(server)
