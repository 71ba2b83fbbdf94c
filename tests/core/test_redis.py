"""apps/core/redis.py: one asyncio client per event loop and one sync client, against the
machine's Redis; none at all without REDIS_URL."""

import asyncio

import pytest
from django.test import override_settings

from apps.core import redis as clients


@pytest.mark.services
def test_one_async_client_per_loop_talking_to_redis():
    async def twice():
        first, second = clients.async_client(), clients.async_client()
        try:
            return first is second, await first.ping(), first
        finally:
            await first.aclose()

    same, pong, client_a = asyncio.run(twice())
    _, _, client_b = asyncio.run(twice())
    assert same and pong is True
    assert client_a is not client_b  # a new loop gets its own client (and pool)


@pytest.mark.services
def test_the_sync_client_is_shared_and_answers():
    client = clients.sync_client()
    assert client is clients.sync_client()
    assert client.ping() is True


@override_settings(REDIS_URL="")
def test_without_redis_url_there_is_no_client():
    async def inside_a_loop():
        return clients.async_client()

    assert clients.sync_client() is None
    assert asyncio.run(inside_a_loop()) is None
