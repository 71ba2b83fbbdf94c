"""The shared token bucket on real Redis: takes from many sockets at once share round trips
and still count exactly."""

import asyncio
import random

import pytest
from django.test import override_settings

from apps.messaging import ratelimit
from apps.users.presence import shared_redis

pytestmark = pytest.mark.services


@override_settings(CHAT_RATE_LIMIT_MESSAGES=5, CHAT_RATE_LIMIT_PER_SECOND=0.01)
def test_concurrent_takes_are_batched_and_each_bucket_counts_exactly():
    users = [random.randrange(10**9, 2 * 10**9) for _ in range(3)]
    calls = []

    async def scenario():
        batcher = ratelimit._batchers.get()
        real = batcher.run_batch

        async def counting(keys):
            calls.append(len(keys))
            return await real(keys)

        batcher.run_batch = counting
        # 8 takes per user, all in flight at once: 5 tokens each.
        takes = [ratelimit.take(user) for _ in range(8) for user in users]
        results = await asyncio.gather(*takes)
        client = shared_redis()
        await client.delete(*(f"{ratelimit.settings.CHANNELS_PREFIX}:ratelimit:{u}" for u in users))
        return results

    results = asyncio.run(scenario())
    per_user = {user: [results[i] for i in range(len(results)) if i % 3 == k]
                for k, user in enumerate(users)}
    assert all(allowed.count(True) == 5 for allowed in per_user.values())
    assert all(allowed[:5] == [True] * 5 for allowed in per_user.values())  # in arrival order
    assert sum(calls) == 24 and len(calls) <= 2  # the first take alone, then the rest together
