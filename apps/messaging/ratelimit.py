"""Messages per user per interval: a token bucket in Redis, shared by every server process.

The bucket holds CHAT_RATE_LIMIT_MESSAGES tokens and refills at CHAT_RATE_LIMIT_PER_SECOND;
each action frame (message.send / edit / delete, reaction.add / remove) takes one. The script
reads Redis's clock, so processes on several machines agree. Without REDIS_URL (embedded mode)
the same bucket lives in this process.
"""

from __future__ import annotations

import time

from django.conf import settings

from apps.users.presence import shared_redis
from chatproject.batching import Batcher, PerLoop

# One bucket per KEYS[i]; returns 1 (allowed) or 0 for each, in order.
_TAKE = """
local cap, rate = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ttl = math.ceil(cap / rate * 1000) + 1000
local out = {}
for i, key in ipairs(KEYS) do
  local v = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens, ts = tonumber(v[1]) or cap, tonumber(v[2]) or now
  tokens = math.min(cap, tokens + math.max(0, now - ts) * rate)
  local ok = 0
  if tokens >= 1 then
    tokens = tokens - 1
    ok = 1
  end
  redis.call('HSET', key, 'tokens', tostring(tokens), 'ts', tostring(now))
  redis.call('PEXPIRE', key, ttl)
  out[i] = ok
end
return out
"""

_local_buckets: dict[int, tuple[float, float]] = {}
_scripts: dict = {}


def take_local(user_id: int, *, capacity: float, rate: float, now: float | None = None) -> bool:
    """The bucket rule on an in-process dict (embedded mode, and the unit tests)."""
    now = time.monotonic() if now is None else now
    tokens, ts = _local_buckets.get(user_id, (capacity, now))
    tokens = min(capacity, tokens + max(0.0, now - ts) * rate)
    allowed = tokens >= 1
    if allowed:
        tokens -= 1
    _local_buckets[user_id] = (tokens, now)
    return allowed


async def take(user_id: int) -> bool:
    """Take one token from the user's bucket; False means rate_limited.

    The takes of all sockets of this process that arrive while one script call is in flight
    go together in the next call (one round trip for many frames)."""
    capacity = float(settings.CHAT_RATE_LIMIT_MESSAGES)
    rate = float(settings.CHAT_RATE_LIMIT_PER_SECOND)
    if capacity <= 0 or rate <= 0:
        return True
    if shared_redis() is None:
        return take_local(user_id, capacity=capacity, rate=rate)
    return await _batchers.get().submit(f"{settings.CHANNELS_PREFIX}:ratelimit:{user_id}")


async def _take_many(keys: list[str]) -> list[bool]:
    client = shared_redis()
    script = _scripts.get(id(client))
    if script is None or script.registered_client is not client:
        script = _scripts[id(client)] = client.register_script(_TAKE)
    capacity = float(settings.CHAT_RATE_LIMIT_MESSAGES)
    rate = float(settings.CHAT_RATE_LIMIT_PER_SECOND)
    return [bool(ok) for ok in await script(keys=keys, args=[capacity, rate])]


_batchers = PerLoop(lambda: Batcher(_take_many, max_batch=500))
