"""The project's Redis clients for REDIS_URL: one asyncio client per event loop, one sync client.

Both are None without REDIS_URL (embedded mode); callers then use their in-process fallback.
The async client (presence, the rate limiter, rights versions read by the hub) sits on a
blocking pool: a burst of sockets waits for a connection instead of failing. The sync client
(the outbox kick key, rights version bumps, presence lookups from workers) has small timeouts:
a request or task that committed must not wait long on Redis for a side effect.
"""

from __future__ import annotations

from django.conf import settings

from .aio import PerLoop


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
