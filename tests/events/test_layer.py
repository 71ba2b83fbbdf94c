"""apps.events.layer against the installed channels-redis: what it relies on is still there
(pinned to the version it was checked against), and a real round trip through Redis.

When an upgrade fails one of these: read channels_redis/core.py of the new version against
apps/events/layer.py (key layout, sharding, group_send's script and expiry rules, the receive
path), change the adapter where they differ, then move PINNED.
"""

import asyncio
import importlib.metadata
import inspect
import re
import time
import uuid

import pytest
from channels_redis.core import RedisChannelLayer
from django.conf import settings
from redis.commands.core import AsyncScript

from apps.events import fanout, layer

PINNED = "4.3.0"
UPGRADE = (
    "channels-redis {found} is installed; apps.events.layer was checked against "
    f"{PINNED}. Re-read channels_redis/core.py against the adapter, then update PINNED "
    "in tests/events/test_layer.py. "
)


# channels-redis 4.3.0 `RedisChannelLayer.group_send`'s script, which layer.QUEUE_MANY_LUA copies.
LIBRARY_GROUP_SEND_LUA = """
                local over_capacity = 0
                local current_time = ARGV[#ARGV - 1]
                local expiry = ARGV[#ARGV]
                for i=1,#KEYS do
                    if redis.call('ZCOUNT', KEYS[i], '-inf', '+inf') < tonumber(ARGV[i + #KEYS]) then
                        redis.call('ZADD', KEYS[i], current_time, ARGV[i])
                        redis.call('EXPIRE', KEYS[i], expiry)
                    else
                        over_capacity = over_capacity + 1
                    end
                end
                return over_capacity
            """


def upgrade_hint() -> str:
    return UPGRADE.format(found=importlib.metadata.version("channels-redis"))


def squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def test_the_installed_channels_redis_is_the_pinned_version():
    assert importlib.metadata.version("channels-redis") == PINNED, upgrade_hint()


def test_the_layer_attributes_and_methods_the_adapter_uses_are_unchanged():
    expected = {
        "connection": ["self", "index"],
        "consistent_hash": ["self", "value"],
        "non_local_name": ["self", "name"],
        "serialize": ["self", "message"],
        "deserialize": ["self", "message"],
        "get_capacity": ["self", "channel"],
        "require_valid_group_name": ["self", "name"],
        "_group_key": ["self", "group"],
        "group_send": ["self", "group", "message"],
        "group_add": ["self", "group", "channel"],
        "receive": ["self", "channel"],
    }
    for name, params in expected.items():
        method = getattr(RedisChannelLayer, name, None)
        assert method is not None, upgrade_hint() + f"RedisChannelLayer.{name} is gone"
        found = list(inspect.signature(method).parameters)
        assert found == params, upgrade_hint() + f"RedisChannelLayer.{name}{found} changed"
    assert RedisChannelLayer.brpop_timeout == 5, upgrade_hint() + "brpop_timeout changed"
    instance = RedisChannelLayer(prefix="pin", expiry=7, group_expiry=9, capacity=3)
    assert (instance.prefix, instance.expiry, instance.group_expiry) == ("pin", 7, 9), (
        upgrade_hint() + "the layer's prefix/expiry/group_expiry attributes changed"
    )
    assert layer.group_key(instance, "room.1") == b"pin:group:room.1", (
        upgrade_hint() + "the group key layout (_group_key) changed"
    )
    assert layer.channel_key(instance, "realtime.abc!def") == "pinrealtime.abc!", (
        upgrade_hint() + "the channel key layout (prefix + non-local name) changed"
    )


def test_group_send_still_runs_the_script_and_expiry_rules_the_adapter_copies():
    source = inspect.getsource(RedisChannelLayer.group_send)
    assert squash(LIBRARY_GROUP_SEND_LUA) in squash(source), (
        upgrade_hint() + "group_send's Lua script changed (compare layer.QUEUE_MANY_LUA)"
    )
    # Group members expire after group_expiry, messages after expiry (purged before queueing).
    assert "max=int(time.time()) - self.group_expiry" in source, upgrade_hint()
    assert "max=int(time.time()) - int(self.expiry)" in source, upgrade_hint()
    # The adapter's script is the library's with that purge folded in, nothing else changed.
    ours = squash(layer.QUEUE_MANY_LUA)
    for statement in (
        "redis.call('ZCOUNT', KEYS[i], '-inf', '+inf') <",
        "redis.call('ZADD', KEYS[i],",
        "redis.call('EXPIRE', KEYS[i], expiry)",
        "redis.call('ZREMRANGEBYSCORE', KEYS[i], 0, stale)",
    ):
        assert statement in ours, statement


def test_the_receive_path_the_adapter_bypasses_reads_the_keys_it_pops():
    source = squash(inspect.getsource(RedisChannelLayer.receive_single))
    assert "channel_key = self.prefix + channel" in source, upgrade_hint()
    assert "index = self.consistent_hash(channel)" in source, upgrade_hint()
    popping = squash(inspect.getsource(RedisChannelLayer._brpop_with_clean))
    assert "bzpopmin(channel, timeout=timeout)" in popping, upgrade_hint()
    mapping = squash(inspect.getsource(RedisChannelLayer._map_channel_keys_to_connection))
    assert "self.consistent_hash(channel_non_local_name)" in mapping, (
        upgrade_hint() + "group_send no longer shards channel keys by their non-local name"
    )
    assert "__asgi_channel__" in squash(inspect.getsource(RedisChannelLayer.send))
    # redis-py: the cached script is re-registered when the client changes.
    assert "registered_client" in inspect.signature(AsyncScript.__init__).parameters


def redis_layer():
    if not layer.is_redis_layer(fanout.get_channel_layer()):
        pytest.skip("needs the Redis channel layer")
    return RedisChannelLayer(**settings.CHANNEL_LAYERS["default"]["CONFIG"])


@pytest.mark.services
def test_round_trip_through_redis_with_the_library_on_either_side():
    tag = uuid.uuid4().hex[:8]
    groups = [f"room.pin{tag}{i}" for i in range(3)]

    async def scenario():
        first, second = redis_layer(), redis_layer()
        one, two = await first.new_channel("realtime"), await second.new_channel("realtime")
        try:
            await layer.group_add_many(first, groups, one)
            await second.group_add(groups[0], two)
            # Ours to ours: one message per process channel, in order.
            await layer.group_send_many(
                first, [(g, {"type": "x.ours", "n": n}) for n, g in enumerate(groups)]
            )
            mine = await asyncio.wait_for(layer.receive_many(first, one), 5)
            # The library's group_send to our receive.
            await second.group_send(groups[1], {"type": "x.library"})
            library = await asyncio.wait_for(layer.receive_many(first, one), 5)
            # Ours to the library's receive.
            theirs = await asyncio.wait_for(second.receive(two), 5)
        finally:
            for group in groups:
                await first.group_discard(group, one)
            await second.group_discard(groups[0], two)
        return mine, library, theirs

    mine, library, theirs = asyncio.run(scenario())
    assert [m["type"] for m in mine] == ["chat.events"]
    assert [e["n"] for e in mine[0]["events"]] == [0, 1, 2]
    assert library == [{"type": "x.library"}]
    assert theirs == {"type": "x.ours", "n": 0}  # its only share: not wrapped


@pytest.mark.services
def test_one_send_goes_through_the_adapter_as_group_send_would_deliver_it():
    tag = uuid.uuid4().hex[:8]
    group = f"room.one{tag}"

    async def scenario():
        first, second = redis_layer(), redis_layer()
        ours, theirs = await first.new_channel("realtime"), await second.new_channel("realtime")
        try:
            await first.group_add(group, ours)
            await second.group_add(group, theirs)
            await layer.group_send_many(first, [(group, {"type": "x.one", "n": 1})])
            return (
                await asyncio.wait_for(layer.receive_many(first, ours), 5),
                await asyncio.wait_for(second.receive(theirs), 5),
            )
        finally:
            await first.group_discard(group, ours)
            await second.group_discard(group, theirs)

    mine, library = asyncio.run(scenario())
    assert mine == [{"type": "x.one", "n": 1}]  # not wrapped in chat.events
    assert library == {"type": "x.one", "n": 1}


@pytest.mark.services
def test_group_send_many_purges_expired_messages_before_the_capacity_check():
    tag = uuid.uuid4().hex[:8]
    groups = [f"room.exp{tag}{i}" for i in range(2)]

    async def scenario():
        redis = redis_layer()
        channel = await redis.new_channel("realtime")
        key = layer.channel_key(redis, channel)
        connection = redis.connection(redis.consistent_hash(redis.non_local_name(channel)))
        try:
            await layer.group_add_many(redis, groups, channel)
            # A process that stopped reading: its channel is full of expired messages.
            stale = time.time() - redis.expiry - 10
            await connection.zadd(
                key, {f"stale{i}".encode(): stale for i in range(redis.get_capacity(channel))}
            )
            await layer.group_send_many(redis, [(g, {"type": "x.fresh"}) for g in groups])
            return await asyncio.wait_for(layer.receive_many(redis, channel), 5)
        finally:
            await connection.delete(key)
            for group in groups:
                await redis.group_discard(group, channel)

    got = asyncio.run(scenario())
    assert got == [{"type": "chat.events", "events": [{"type": "x.fresh"}] * 2}]


@pytest.mark.services
def test_group_send_many_drops_expired_group_members_as_group_send_does():
    """A member whose group_add is older than group_expiry (a process that died without
    leaving) is removed from the group and gets nothing; the live member gets the message."""
    tag = uuid.uuid4().hex[:8]
    groups = [f"room.gone{tag}{i}" for i in range(2)]

    async def scenario():
        redis = redis_layer()
        live, dead = await redis.new_channel("realtime"), await redis.new_channel("realtime")
        connection = redis.connection(0)
        try:
            await layer.group_add_many(redis, groups, live)
            for group in groups:
                key = layer.group_key(redis, group)
                await connection.zadd(key, {dead: time.time() - redis.group_expiry - 10})
            await layer.group_send_many(redis, [(g, {"type": "x.live"}) for g in groups])
            got = await asyncio.wait_for(layer.receive_many(redis, live), 5)
            members = [await connection.zrange(layer.group_key(redis, g), 0, -1) for g in groups]
            dead_queue = await connection.zcard(layer.channel_key(redis, dead))
            return got, members, dead_queue, live
        finally:
            for group in groups:
                await redis.group_discard(group, live)
                await redis.group_discard(group, dead)

    got, members, dead_queue, live = asyncio.run(scenario())
    assert got == [{"type": "chat.events", "events": [{"type": "x.live"}] * 2}]
    assert members == [[live.encode()], [live.encode()]]
    assert dead_queue == 0


@pytest.mark.services
def test_group_add_many_joins_every_group_as_group_add_does():
    config = settings.CHANNEL_LAYERS["default"]["CONFIG"]
    tag = uuid.uuid4().hex[:8]
    groups = [f"room.{tag}{i}" for i in range(300)]

    async def scenario():
        redis = redis_layer()
        channel = await redis.new_channel("realtime")
        try:
            await layer.group_add_many(redis, groups, channel)
            await redis.group_send(groups[0], {"type": "x.first"})
            await redis.group_send(groups[-1], {"type": "x.last"})
            got = [(await asyncio.wait_for(redis.receive(channel), 5))["type"] for _ in range(2)]
            connection = redis.connection(redis.consistent_hash(groups[150]))
            ttl = await connection.ttl(layer.group_key(redis, groups[150]))
            members = await connection.zrange(layer.group_key(redis, groups[150]), 0, -1)
        finally:
            for group in groups:
                await redis.group_discard(group, channel)
        return got, ttl, members, channel

    got, ttl, members, channel = asyncio.run(scenario())
    assert got == ["x.first", "x.last"]
    assert 0 < ttl <= config.get("group_expiry", 86400)
    assert [m.decode() for m in members] == [channel]


@pytest.mark.services
def test_a_channel_read_in_this_process_gets_its_share_in_memory_and_the_rest_via_redis():
    """receive_locally: the sending loop's own process channel gets its messages handed over
    (in order, none queued in Redis); another process's channel in the same groups gets its
    share through Redis as before; a send from another loop does not use the handover."""
    tag = uuid.uuid4().hex[:8]
    groups = [f"room.local{tag}{i}" for i in range(2)]
    handed = []

    async def scenario():
        redis, other_process = redis_layer(), redis_layer()
        ours, theirs = await redis.new_channel("realtime"), await other_process.new_channel("x")
        connection = redis.connection(0)
        try:
            await layer.group_add_many(redis, groups, ours)
            await layer.group_add_many(redis, groups, theirs)
            layer.receive_locally(ours, handed.append)
            sends = [(g, {"type": "x.n", "n": n}) for n in range(2) for g in groups]
            await layer.group_send_many(redis, sends)
            queued_for_ours = await connection.zcard(layer.channel_key(redis, ours))
            got_theirs = await asyncio.wait_for(layer.receive_many(other_process, theirs), 5)
            return ours, queued_for_ours, got_theirs
        finally:
            for group in groups:
                await redis.group_discard(group, ours)
                await redis.group_discard(group, theirs)

    ours, queued_for_ours, got_theirs = asyncio.run(scenario())
    expected = [{"type": "x.n", "n": n} for n in range(2) for _ in groups]
    assert handed == [expected]  # one handover, in send order
    assert queued_for_ours == 0
    assert got_theirs == [{"type": "chat.events", "events": expected}]

    async def from_another_loop():  # the registration belongs to the first loop
        redis = redis_layer()
        try:
            await layer.group_add_many(redis, groups, ours)
            await layer.group_send_many(redis, [(groups[0], {"type": "x.other"})])
            return await asyncio.wait_for(layer.receive_many(redis, ours), 5)
        finally:
            for group in groups:
                await redis.group_discard(group, ours)
            layer.stop_receiving_locally(ours)

    assert asyncio.run(from_another_loop()) == [{"type": "x.other"}]
    assert len(handed) == 1
