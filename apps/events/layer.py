"""The channel-layer adapter: every use of channels-redis beyond its public API is here.

The realtime path needs three things the layer's API makes expensive, so with channels-redis
(checked by `is_redis_layer`) they go to Redis directly, through the layer's own key layout,
sharding, serializer and capacity rules; any other layer (the in-memory one of embedded mode)
gets the plain API calls.

- `group_send_many`: a group commit's events in two round trips per Redis host (one script
  purges the expired members of every group and reads the rest, as group_send's
  ZREMRANGEBYSCORE and ZRANGE do; one script queues, per process channel, one `chat.events`
  message holding that process's share in order), where group_send costs four per group and
  event. The script is the one channels-redis's group_send runs (pinned by
  tests/events/test_layer.py) with its expiry purge folded in: the library purges
  expired messages of each channel in a pipeline before the script; here the script does it
  (ZREMRANGEBYSCORE), so a channel that stops reading does not stay full of stale messages.
- `group_add_many`: one channel into many groups, one pipeline per host (the same ZADD and
  EXPIRE as group_add) instead of two round trips per group.
- `receive_many`: the process channel's sorted set popped directly, up to 1000 messages per
  round trip (BZPOPMIN then ZPOPMIN), where receive() costs four round trips per message and
  caps a busy process at a few hundred events/s.
- `receive_locally`: a process channel whose reader runs in this process, on the loop that
  sends, gets its share of a group_send_many handed over in memory instead of through Redis:
  the sending process's own sockets were a queue script, a pop and a serialize/deserialize
  away from events it had in hand. Every other member still gets its share through Redis,
  in the same call; the members are still read from Redis (the groups are the truth).

Why not the library's crash-safe receive: receive() keeps each popped message in a backup
sorted set (`<channel>$inflight`) until the next receive on the same channel, so that a receive
cancelled half-way loses nothing: four round trips per message, the cost receive_many exists
to avoid. It protects a channel that someone reads again; the hub's process channel is read by
one task for the life of its process and its name dies with the process, so a backup would
only ever be restored to nobody. What a dying process popped was for its own sockets only, and
every socket fills gaps from the event log (apps.messaging.hub), which is the source of truth.
"""

from __future__ import annotations

import asyncio
import logging
import time

from redis.exceptions import TimeoutError as RedisTimeout

try:
    from channels_redis.core import RedisChannelLayer
except ImportError:  # channels-redis not installed: only the plain layer API is used
    RedisChannelLayer = None

logger = logging.getLogger(__name__)

# What receive_many raises when an idle blocking pop outlived the client's socket timeout.
IDLE_TIMEOUTS = (TimeoutError, RedisTimeout)
RECEIVE_BATCH = 1000  # messages popped per round trip at most

# channels-redis's group_send script (tests/events/test_layer.py holds the library's text) with
# the expiry purge it runs before it folded in. KEYS: channel keys; ARGV: one message per key,
# each key's capacity, then now, expiry, and the score below which a message has expired.
QUEUE_MANY_LUA = """
local n = #KEYS
local now, expiry, stale = ARGV[2 * n + 1], ARGV[2 * n + 2], ARGV[2 * n + 3]
local full = 0
for i = 1, n do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], 0, stale)
  if redis.call('ZCOUNT', KEYS[i], '-inf', '+inf') < tonumber(ARGV[n + i]) then
    redis.call('ZADD', KEYS[i], now, ARGV[i])
    redis.call('EXPIRE', KEYS[i], expiry)
  else
    full = full + 1
  end
end
return full
"""
_queue_scripts: dict = {}

# group_send's member read for many groups in one command (a pipeline of two commands per
# group cost 5.7 % of the server at 1,000 sends/s, in redis-py's packing and parsing). KEYS:
# group keys; ARGV[1]: the score below which a member has expired. Returns each group's
# members.
MEMBERS_MANY_LUA = """
local out = {}
for i = 1, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], 0, ARGV[1])
  out[i] = redis.call('ZRANGE', KEYS[i], 0, -1)
end
return out
"""
_members_scripts: dict = {}


# Process channels read in this process: {channel: (the reader's loop, deliver(messages))}.
_local_receivers: dict[str, tuple[asyncio.AbstractEventLoop, object]] = {}


def receive_locally(channel: str, deliver) -> None:
    """From now on, messages group_send_many sends to `channel` from the running loop (the
    reader's) go to `deliver(messages)`, in order, instead of through Redis (see the module
    docstring). From any other loop they still go through Redis."""
    for name, (loop, _) in list(_local_receivers.items()):
        if loop.is_closed():
            del _local_receivers[name]
    _local_receivers[channel] = (asyncio.get_running_loop(), deliver)


def stop_receiving_locally(channel: str) -> None:
    _local_receivers.pop(channel, None)


def _script(cache: dict, connection, text: str):
    script = cache.get(id(connection))
    if script is None or script.registered_client is not connection:
        script = cache[id(connection)] = connection.register_script(text)
    return script


def is_redis_layer(layer) -> bool:
    return RedisChannelLayer is not None and isinstance(layer, RedisChannelLayer)


def group_key(layer, group: str) -> bytes:
    """The Redis key of a group's sorted set of channels."""
    return layer._group_key(group)


def channel_key(layer, channel: str) -> str:
    """The Redis key of a channel's sorted set of messages (process channels "name!suffix"
    of one process share one key)."""
    return layer.prefix + layer.non_local_name(channel)


def _by_host(layer, names) -> dict[int, list[str]]:
    """Group or channel names by the index of the Redis host that holds them."""
    by_index: dict[int, list[str]] = {}
    for name in names:
        by_index.setdefault(layer.consistent_hash(name), []).append(name)
    return by_index


async def group_send_many(layer, sends) -> None:
    """group_send for many (group, message) pairs, in order (see the module docstring). Like
    group_send, a channel over capacity drops its message (the receiving process fills the
    gap from the event log) and the expiry rules are channels-redis's own."""
    if not is_redis_layer(layer):
        for group, message in sends:
            await layer.group_send(group, message)
        return
    if not sends:
        return
    # One send too: two round trips, where the library's group_send takes three (its member
    # read, a pipeline purging each channel's expired messages, its script); a send alone in
    # its batch spent 6 % of the server at 100 sends/s there.
    now = time.time()
    members: dict[str, list[str]] = {}
    for index, groups in _by_host(layer, dict.fromkeys(group for group, _ in sends)).items():
        script = _script(_members_scripts, layer.connection(index), MEMBERS_MANY_LUA)
        replies = await script(
            keys=[group_key(layer, group) for group in groups],
            args=[int(now) - layer.group_expiry],
        )
        for group, channels in zip(groups, replies, strict=True):
            members[group] = [channel.decode() for channel in channels]
    per_key: dict[str, tuple[str, list[dict]]] = {}
    for group, message in sends:
        for channel in members.get(group, ()):
            per_key.setdefault(channel_key(layer, channel), (channel, []))[1].append(message)
    queued: dict[int, tuple[list, list, list]] = {}
    local = []
    loop = asyncio.get_running_loop()
    for key, (channel, messages) in per_key.items():
        receiver = _local_receivers.get(channel)
        if receiver is not None and receiver[0] is loop:
            local.append((receiver[1], messages))
            continue
        message = messages[0] if len(messages) == 1 else {"type": "chat.events", "events": messages}
        if "!" in channel:
            message = {**message, "__asgi_channel__": channel}
        # The host of the key, as group_send picks it (the channel's non-local name).
        index = layer.consistent_hash(layer.non_local_name(channel))
        keys, payloads, capacities = queued.setdefault(index, ([], [], []))
        keys.append(key)
        payloads.append(layer.serialize(message))
        capacities.append(layer.get_capacity(channel))
    expiry = int(layer.expiry)
    try:
        # The other processes' shares first: this process's own follow without a round trip.
        for index, (keys, payloads, capacities) in queued.items():
            script = _script(_queue_scripts, layer.connection(index), QUEUE_MANY_LUA)
            full = await script(
                keys=keys, args=[*payloads, *capacities, now, expiry, int(now) - expiry]
            )
            if full:
                logger.info(
                    "%d of %d process channels over capacity; they fill from the log",
                    full,
                    len(keys),
                )
    finally:
        for deliver, messages in local:
            deliver(messages)


async def group_add_many(layer, groups: list[str], channel: str) -> None:
    """group_add of one channel to many groups (see the module docstring)."""
    if not is_redis_layer(layer):
        await asyncio.gather(*(layer.group_add(group, channel) for group in groups))
        return
    now = time.time()
    for group in groups:
        assert layer.require_valid_group_name(group), "Group name not valid"
    for index, names in _by_host(layer, groups).items():
        pipe = layer.connection(index).pipeline(transaction=False)
        for group in names:
            key = group_key(layer, group)
            pipe.zadd(key, {channel: now})
            pipe.expire(key, layer.group_expiry)
        await pipe.execute()


async def receive_many(layer, channel: str) -> list[dict]:
    """The next messages on a channel, as many as are waiting (at least one, or none when
    the blocking pop timed out). Other layers go through receive()."""
    if not is_redis_layer(layer):
        return [await layer.receive(channel)]
    real = layer.non_local_name(channel)
    key = layer.prefix + real
    connection = layer.connection(layer.consistent_hash(real))
    first = await connection.bzpopmin(key, timeout=layer.brpop_timeout)
    if first is None:
        return []
    members = [first[1]]
    members += [member for member, _score in await connection.zpopmin(key, RECEIVE_BATCH - 1)]
    messages = []
    for member in members:
        message = layer.deserialize(member)
        message.pop("__asgi_channel__", None)
        messages.append(message)
    return messages
