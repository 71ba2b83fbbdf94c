"""The one limiter for every write: per-user token buckets in Redis, shared by every process.

Every write, REST (apps.users.throttles.WriteThrottle) or WebSocket (the consumer), takes one
token from the user's `write` bucket (CHAT_RATE_LIMIT_MESSAGES tokens, refilled at
CHAT_RATE_LIMIT_PER_SECOND). Some writes also take from a smaller bucket of their own, so a
user cannot spend the whole write budget on them: room creation, direct-room opening, invites,
reports and uploads (RATE_LIMIT_* settings). Read receipts take from a `read` bucket only (cheap and
frequent, as in Zulip: they never starve sends), and typing frames from a small bucket per user
and room. A take either takes from every bucket it names or from none.

The script reads Redis's clock, so processes on several machines agree. The WebSocket's takes
that arrive while one script call is in flight go together in the next call (one round trip for
many frames); a send batch's takes are one call (take_many, from apps.messaging.sendqueue);
REST takes are one call each. Without REDIS_URL (embedded mode), or while Redis
is unreachable, the same buckets live in this process: the limiter fails open to a local
bucket, never to an error.
"""

from __future__ import annotations

import logging
import math
import time

from django.conf import settings

from apps.core.aio import Batcher, PerLoop
from apps.core.errors import RateLimited
from apps.core.redis import RedisUnavailable, async_client, guarded

logger = logging.getLogger(__name__)

# Budget name -> the (capacity setting, refill-per-second setting) of each bucket it takes from.
BUDGETS: dict[str, tuple[tuple[str, str], ...]] = {
    "write": (("CHAT_RATE_LIMIT_MESSAGES", "CHAT_RATE_LIMIT_PER_SECOND"),),
    "room_create": (
        ("CHAT_RATE_LIMIT_MESSAGES", "CHAT_RATE_LIMIT_PER_SECOND"),
        ("RATE_LIMIT_ROOM_CREATE", "RATE_LIMIT_ROOM_CREATE_PER_SECOND"),
    ),
    "dm_open": (
        ("CHAT_RATE_LIMIT_MESSAGES", "CHAT_RATE_LIMIT_PER_SECOND"),
        ("RATE_LIMIT_DM_OPEN", "RATE_LIMIT_DM_OPEN_PER_SECOND"),
    ),
    "invite": (
        ("CHAT_RATE_LIMIT_MESSAGES", "CHAT_RATE_LIMIT_PER_SECOND"),
        ("RATE_LIMIT_INVITE", "RATE_LIMIT_INVITE_PER_SECOND"),
    ),
    "report": (
        ("CHAT_RATE_LIMIT_MESSAGES", "CHAT_RATE_LIMIT_PER_SECOND"),
        ("RATE_LIMIT_REPORT", "RATE_LIMIT_REPORT_PER_SECOND"),
    ),
    "upload": (
        ("CHAT_RATE_LIMIT_MESSAGES", "CHAT_RATE_LIMIT_PER_SECOND"),
        ("RATE_LIMIT_UPLOAD", "RATE_LIMIT_UPLOAD_PER_SECOND"),
    ),
    "read": (("RATE_LIMIT_READ", "RATE_LIMIT_READ_PER_SECOND"),),
    "typing": (("CHAT_TYPING_RATE_LIMIT", "CHAT_TYPING_RATE_LIMIT_PER_SECOND"),),
    # `subscribe` frames (each may start a replay): their own bucket, not the write budget.
    "subscribe": (("CHAT_SUBSCRIBE_RATE_LIMIT", "CHAT_SUBSCRIBE_RATE_PER_SECOND"),),
}

# Each request is n buckets (its KEYS, in order). ARGV describes runs of consecutive requests
# of the same shape, so a batch of sends costs two arguments, not two per send: the run count,
# then per run its request count, n, and n × (capacity, rate). Per request: 0 when allowed (one
# token taken from each of its buckets), else the milliseconds until every one of them holds a
# token again (nothing is taken).
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local out, k, a = {}, 1, 2
for run = 1, tonumber(ARGV[1]) do
  local count, n = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local caps, rates, ttls = {}, {}, {}
  for i = 1, n do
    caps[i], rates[i] = tonumber(ARGV[a + 2 * i]), tonumber(ARGV[a + 2 * i + 1])
    ttls[i] = math.ceil(caps[i] / rates[i] * 1000) + 1000
  end
  a = a + 2 + 2 * n
  for r = 1, count do
    local wait, levels = 0, {}
    for i = 1, n do
      local v = redis.call('HMGET', KEYS[k + i - 1], 'tokens', 'ts')
      local cap, rate = caps[i], rates[i]
      local tokens = math.min(cap, (tonumber(v[1]) or cap)
        + math.max(0, now - (tonumber(v[2]) or now)) * rate)
      if tokens < 1 then
        wait = math.max(wait, math.ceil((1 - tokens) / rate * 1000))
      end
      levels[i] = tokens
    end
    for i = 1, n do
      local tokens = levels[i]
      if wait == 0 then tokens = tokens - 1 end
      redis.call('HSET', KEYS[k + i - 1], 'tokens', tostring(tokens), 'ts', tostring(now))
      redis.call('PEXPIRE', KEYS[k + i - 1], ttls[i])
    end
    k = k + n
    out[#out + 1] = wait
  end
end
return out
"""

# (key, capacity, refill per second) for each bucket of one take.
Bucket = tuple[str, float, float]

_local_buckets: dict[str, tuple[float, float]] = {}
_LOCAL_MAX = 100_000  # entries before the full (= idle) buckets are dropped
_scripts: dict = {}
_sync_client = None
_sync_down_until = 0.0
SYNC_BACKOFF_SECONDS = 5.0  # after a Redis failure, REST takes count locally this long


def buckets(user_id: int, budget: str = "write", scope=None) -> list[Bucket]:
    """The buckets a take of `budget` by this user draws from (none when limits are off).

    `scope` (a room id, for typing) narrows the budget's own bucket to that scope."""
    out = []
    prefix = f"{settings.CHANNELS_PREFIX}:ratelimit"
    for cap_name, rate_name in BUDGETS[budget]:
        capacity, rate = float(getattr(settings, cap_name)), float(getattr(settings, rate_name))
        if capacity <= 0 or rate <= 0:
            continue
        if cap_name == "CHAT_RATE_LIMIT_MESSAGES":
            key = f"{prefix}:{user_id}"  # the write bucket every write shares
        else:
            key = f"{prefix}:{budget}:{user_id}" + (f":{scope}" if scope is not None else "")
        out.append((key, capacity, rate))
    return out


def take_local(request: list[Bucket], *, now: float | None = None) -> float:
    """The bucket rule on an in-process dict: 0.0 when allowed, else seconds to wait."""
    now = time.monotonic() if now is None else now
    if len(_local_buckets) > _LOCAL_MAX:
        _prune(now)
    levels, wait = [], 0.0
    for key, capacity, rate in request:
        tokens, ts = _local_buckets.get(key, (capacity, now))
        tokens = min(capacity, tokens + max(0.0, now - ts) * rate)
        if tokens < 1:
            wait = max(wait, (1 - tokens) / rate)
        levels.append((key, tokens))
    for key, tokens in levels:
        _local_buckets[key] = (tokens - 1 if not wait else tokens, now)
    return _round_up(wait)


def _prune(now: float) -> None:
    for key, (_tokens, ts) in list(_local_buckets.items()):
        if now - ts > 3600:
            del _local_buckets[key]


def _round_up(seconds: float) -> float:
    return math.ceil(seconds * 1000) / 1000 if seconds > 0 else 0.0


def _script_args(requests: list[list[Bucket]]) -> tuple[list[str], list]:
    keys, runs, shape = [], [], None
    for request in requests:
        keys += [key for key, _, _ in request]
        this = [(capacity, rate) for _, capacity, rate in request]
        if this == shape:
            runs[-1][0] += 1
        else:
            shape = this
            runs.append([1, this])
    args = [len(runs)]
    for count, buckets_of in runs:
        args += [count, len(buckets_of)]
        for capacity, rate in buckets_of:
            args += [capacity, rate]
    return keys, args


async def take(user_id: int, budget: str = "write", scope=None, *, local_on_error=True) -> float:
    """Take from the user's buckets for `budget`: 0.0 when allowed, else the seconds until a
    retry can succeed (the `retry_after` of the `rate_limited` answer). A Redis error falls
    back to the local bucket, or is raised with `local_on_error=False` (the hub's bounded
    Redis calls handle it)."""
    request = buckets(user_id, budget, scope)
    if not request:
        return 0.0
    if async_client() is None:
        return take_local(request)
    try:
        return await _batchers.get().submit(request)
    except Exception:  # Redis unreachable: limit in this process rather than fail the write
        if not local_on_error:
            raise
        logger.warning("rate limiter: Redis unavailable, using the local bucket", exc_info=True)
        return take_local(request)


class BucketEmpty(RateLimited):
    """A take the user's buckets refused (a socket counts these as flooding strikes; a refusal
    by a room's slow mode is a RateLimited that is not one)."""

    def __init__(self, wait: float):
        super().__init__("too many messages; slow down", retry_after=math.ceil(wait))


async def take_many(requests: list[list[Bucket]]) -> list[float]:
    """One script call for many takes (each a non-empty list of buckets), in order: per take
    0.0, or the seconds to wait (see take). Redis errors are raised: the caller bounds the call
    and falls back to take_local."""
    client = async_client()
    script = _scripts.get(id(client))
    if script is None or script.registered_client is not client:
        script = _scripts[id(client)] = client.register_script(_TAKE)
    keys, args = _script_args(requests)
    return [int(ms) / 1000 for ms in await script(keys=keys, args=args)]


async def bounded(awaitable, local):
    """Await a take on a socket's path, bounded by apps.core.redis.Guard; while Redis is
    failing (or failed a moment ago) the same takes count in this process: `local()` gives
    the answer instead."""
    try:
        return await guarded(awaitable)
    except RedisUnavailable:  # Redis failed a moment ago: do not wait for it again
        pass
    except Exception:
        logger.warning("rate limiter unavailable; counting locally", exc_info=True)
    return local()


_batchers = PerLoop(lambda: Batcher(take_many, max_batch=500))


def take_sync(user_id: int, budget: str = "write", scope=None) -> float:
    """`take` for synchronous callers (DRF views): one script call on this process's client."""
    request = buckets(user_id, budget, scope)
    if not request:
        return 0.0
    global _sync_down_until
    if not settings.REDIS_URL or time.monotonic() < _sync_down_until:
        return take_local(request)
    try:
        script = _sync_script()
        keys, args = _script_args([request])
        return int(script(keys=keys, args=args)[0]) / 1000
    except Exception:  # Redis unreachable: limit in this process rather than answer 500
        logger.warning("rate limiter: Redis unavailable, using the local bucket", exc_info=True)
        _sync_down_until = time.monotonic() + SYNC_BACKOFF_SECONDS  # do not wait on it again
        return take_local(request)


def _sync_script():
    global _sync_client
    if _sync_client is None or _sync_client[0] != settings.REDIS_URL:
        import redis

        client = redis.Redis.from_url(
            settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1, max_connections=50
        )
        _sync_client = (settings.REDIS_URL, client, client.register_script(_TAKE))
    return _sync_client[2]
