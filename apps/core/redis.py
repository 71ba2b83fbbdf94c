"""The project's Redis clients for REDIS_URL: one asyncio client per event loop, one sync client.

Both are None without REDIS_URL (embedded mode); callers then use their in-process fallback.
The async client (presence, the rate limiter, rights versions read by the hub) sits on a
blocking pool: a burst of sockets waits for a connection instead of failing. The sync client
(the outbox kick key, rights version bumps, presence lookups from workers) has small timeouts:
a request or task that committed must not wait long on Redis for a side effect.
"""

from __future__ import annotations

import asyncio
import time

from django.conf import settings

from .aio import PerLoop

# A Redis call on a socket's own path (connect, subscribe, rate limit, a send batch's rate limit)
# waits at most this long; after a failure such calls are skipped for REDIS_BACKOFF seconds, so
# a hung Redis costs the first socket REDIS_TIMEOUT and the others nothing (the log serves them
# meanwhile). One guard per event loop: the hub and the send lanes share what it learned.
REDIS_TIMEOUT = 2.0
REDIS_BACKOFF = 5.0


def _new_async_client():
    from redis import asyncio as aioredis

    pool = aioredis.BlockingConnectionPool.from_url(
        settings.REDIS_URL,
        max_connections=50,
        timeout=10,
        socket_timeout=5,
        socket_connect_timeout=5,
    )
    return aioredis.Redis(connection_pool=pool)


_async_clients = PerLoop(_new_async_client)
_sync_client = None


def async_client():
    """An asyncio Redis client for REDIS_URL, one per event loop (None in embedded mode)."""
    if not settings.REDIS_URL:
        return None
    return _async_clients.get()


def sync_client():
    """The process's small-timeout sync Redis client (None in embedded mode)."""
    global _sync_client
    if not settings.REDIS_URL:
        return None
    if _sync_client is None:
        import redis

        _sync_client = redis.Redis.from_url(
            settings.REDIS_URL, socket_timeout=0.5, socket_connect_timeout=0.5
        )
    return _sync_client


class RedisUnavailable(Exception):
    """Redis failed or timed out recently; the call was not attempted."""


class Guard:
    def __init__(self):
        self.down_until = 0.0

    async def call(self, awaitable):
        """Await a Redis call, bounded by REDIS_TIMEOUT; skipped (raising RedisUnavailable)
        for REDIS_BACKOFF seconds after a failure."""
        if time.monotonic() < self.down_until:
            awaitable.close()
            raise RedisUnavailable()
        try:
            # asyncio.timeout, not wait_for: wait_for runs the call in a task of its own,
            # which cost more CPU than the call itself.
            async with asyncio.timeout(REDIS_TIMEOUT):
                return await awaitable
        except asyncio.CancelledError:
            raise
        except Exception:
            self.down_until = time.monotonic() + REDIS_BACKOFF
            raise


_guards = PerLoop(Guard)


def guarded(awaitable):
    """Guard.call on this event loop's guard."""
    return _guards.get().call(awaitable)
