"""A group commit's events reach each process channel as one ordered message (real Redis)."""

import asyncio
import uuid
from datetime import UTC, datetime

import pytest
from channels_redis.core import RedisChannelLayer
from django.conf import settings

from apps.events import catalogue as ev
from apps.events import fanout, layer

pytestmark = pytest.mark.services


def envelope(type, room, seq, data):
    return ev.envelope(
        type,
        room_id=room,
        seq=seq,
        actor={"id": 1, "username": "ada"},
        data=data,
        ts=datetime.now(UTC),
    )


def test_many_events_go_out_as_one_ordered_message_per_process_channel():
    if not layer.is_redis_layer(fanout.get_channel_layer()):
        pytest.skip("needs the Redis channel layer")
    config = settings.CHANNEL_LAYERS["default"]["CONFIG"]
    tag = uuid.uuid4().hex[:8]
    room, quiet_room, banned = 10_000 + int(tag[:4], 16), 20_000 + int(tag[4:], 16), 77

    async def scenario():
        # Two server processes: each has its own layer (client prefix) and process channel.
        first, second = RedisChannelLayer(**config), RedisChannelLayer(**config)
        one, two = await first.new_channel("realtime"), await second.new_channel("realtime")
        groups = [
            (first, one, fanout.room_group(room)),
            (first, one, fanout.user_group(banned)),
            (second, two, fanout.room_group(room)),
        ]
        for redis_layer, channel, group in groups:
            await redis_layer.group_add(group, channel)
        created = envelope(
            "message.created", room, 5, {"id": 1, "body": "hi", "reply_to": None, "client_id": tag}
        )
        elsewhere = envelope(
            "message.created",
            quiet_room,
            1,
            {"id": 2, "body": "nobody here", "reply_to": None, "client_id": tag},
        )
        ban = envelope(
            "member.banned",
            room,
            6,
            {"user": {"id": banned, "username": "bob"}, "until": None, "reason": ""},
        )
        try:
            await fanout.adispatch_many([(created, ()), (elsewhere, ()), (ban, ())])
            received = [
                await asyncio.wait_for(first.receive(one), 5),
                await asyncio.wait_for(second.receive(two), 5),
            ]
            with pytest.raises(asyncio.TimeoutError):  # one message each, nothing else
                await asyncio.wait_for(first.receive(one), 0.5)
        finally:
            for redis_layer, channel, group in groups:
                await redis_layer.group_discard(group, channel)
        return received

    to_one, to_two = asyncio.run(scenario())
    assert to_one["type"] == to_two["type"] == "chat.events"
    assert [(m["seq"], m["via"]) for m in to_one["events"]] == [
        (5, fanout.room_group(room)),
        (6, fanout.room_group(room)),
        (6, fanout.user_group(banned)),
    ]
    assert [(m["seq"], m["via"]) for m in to_two["events"]] == [
        (5, fanout.room_group(room)),
        (6, fanout.room_group(room)),
    ]
    assert to_one["events"][2]["revokes"] == banned
    assert '"body":"hi"' in to_one["events"][0]["text"]


def test_sync_code_outside_a_server_fans_out_on_one_kept_loop_in_order():
    """A worker's or a command's dispatch (no server loop): it is sent before dispatch_many
    returns, every call on the same loop (its Redis connections kept), in call order."""
    if not layer.is_redis_layer(fanout.get_channel_layer()):
        pytest.skip("needs the Redis channel layer")
    assert fanout.server_loop() is None
    config = settings.CHANNEL_LAYERS["default"]["CONFIG"]
    room = 30_000 + int(uuid.uuid4().hex[:4], 16)
    receiver = RedisChannelLayer(**config)  # another process's layer

    async def join():
        channel = await receiver.new_channel("realtime")
        await receiver.group_add(fanout.room_group(room), channel)
        return channel

    async def receive(channel, count):
        try:
            return [await asyncio.wait_for(receiver.receive(channel), 5) for _ in range(count)]
        finally:
            await receiver.group_discard(fanout.room_group(room), channel)

    channel = asyncio.run(join())
    loops = []
    for seq in (1, 2, 3):
        body = {"id": seq, "body": f"n{seq}", "reply_to": None, "client_id": str(seq)}
        fanout.dispatch_many([(envelope("message.created", room, seq, body), ())])
        loops.append(fanout._process_loop.loop)
    received = asyncio.run(receive(channel, 3))
    assert [m["seq"] for m in received] == [1, 2, 3]
    assert loops[0] is loops[1] is loops[2] and loops[0].is_running()
