"""Pure pieces of the real-time layer: frames, the token bucket rule, the presence rule."""

import asyncio

from apps.messaging.ratelimit import take_local
from apps.messaging.realtime import frame_payload, text_frame
from apps.users.presence import LocalPresence


def test_text_frame_lengths_round_trip():
    for size in (0, 125, 126, 65535, 65536, 70000):
        payload = b"x" * size
        frame = text_frame(payload)
        assert frame[0] == 0x81
        assert frame_payload(frame) == payload
        assert len(frame) - size == (2 if size < 126 else 4 if size < 65536 else 10)


def test_token_bucket_allows_the_burst_then_the_refill_rate():
    user = -1001
    allowed = [take_local(user, capacity=3, rate=2, now=100.0) for _ in range(5)]
    assert allowed == [True, True, True, False, False]
    assert take_local(user, capacity=3, rate=2, now=100.5) is True  # one token back
    assert take_local(user, capacity=3, rate=2, now=100.5) is False
    assert [take_local(user, capacity=3, rate=2, now=200.0) for _ in range(4)] == [
        True, True, True, False]


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
