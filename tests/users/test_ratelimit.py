"""The shared token buckets on real Redis: takes from many sockets at once share round trips
and still count exactly; REST (sync) and WebSocket (async) takes draw from the same bucket; a
budget of its own takes from both or neither; Redis unreachable falls back to a local bucket."""

import asyncio
import random

import pytest
from django.test import override_settings

from apps.core.redis import async_client
from apps.users import ratelimit

pytestmark = pytest.mark.services


def fresh_user() -> int:
    return random.randrange(10**9, 2 * 10**9)


@override_settings(CHAT_RATE_LIMIT_MESSAGES=5, CHAT_RATE_LIMIT_PER_SECOND=0.01)
def test_concurrent_takes_are_batched_and_each_bucket_counts_exactly():
    users = [fresh_user() for _ in range(3)]
    calls = []

    async def scenario():
        batcher = ratelimit._batchers.get()
        real = batcher.run_batch

        async def counting(requests):
            calls.append(len(requests))
            return await real(requests)

        batcher.run_batch = counting
        try:
            # 8 takes per user, all in flight at once: 5 tokens each.
            takes = [ratelimit.take(user) for _ in range(8) for user in users]
            results = await asyncio.gather(*takes)
        finally:
            batcher.run_batch = real
        client = async_client()
        await client.delete(*(f"{ratelimit.settings.CHANNELS_PREFIX}:ratelimit:{u}" for u in users))
        return results

    results = asyncio.run(scenario())
    per_user = {
        user: [results[i] for i in range(len(results)) if i % 3 == k]
        for k, user in enumerate(users)
    }
    assert all([w == 0 for w in waits].count(True) == 5 for waits in per_user.values())
    assert all(waits[:5] == [0] * 5 for waits in per_user.values())  # in arrival order
    # A refused take says how long until a token is back (1 token at 0.01/s: up to 100 s).
    assert all(90 < w <= 100 for waits in per_user.values() for w in waits[5:])
    assert sum(calls) == 24 and len(calls) <= 2  # the first take alone, then the rest together


@override_settings(CHAT_RATE_LIMIT_MESSAGES=6, CHAT_RATE_LIMIT_PER_SECOND=0.01)
def test_rest_and_websocket_takes_share_one_bucket():
    user = fresh_user()
    assert [ratelimit.take_sync(user) for _ in range(4)] == [0, 0, 0, 0]

    async def three_frames():
        return await asyncio.gather(*(ratelimit.take(user) for _ in range(3)))

    waits = asyncio.run(three_frames())
    assert waits[:2] == [0, 0] and waits[2] > 0
    assert ratelimit.take_sync(user) > 0


@override_settings(
    CHAT_RATE_LIMIT_MESSAGES=10,
    CHAT_RATE_LIMIT_PER_SECOND=0.01,
    RATE_LIMIT_REPORT=2,
    RATE_LIMIT_REPORT_PER_SECOND=0.01,
)
def test_a_budget_of_its_own_also_takes_from_the_write_bucket_and_all_or_nothing():
    user = fresh_user()
    assert [bool(ratelimit.take_sync(user, "report")) for _ in range(4)] == [
        False,
        False,
        True,
        True,
    ]
    # Two reports took two write tokens; the refused ones took none: 8 writes left.
    assert [bool(ratelimit.take_sync(user)) for _ in range(9)] == [False] * 8 + [True]


@override_settings(CHAT_TYPING_RATE_LIMIT=3, CHAT_TYPING_RATE_LIMIT_PER_SECOND=0.01)
def test_typing_buckets_are_per_room_and_never_touch_the_write_bucket():
    user = fresh_user()
    room_a = [ratelimit.take_sync(user, "typing", 1) for _ in range(4)]
    room_b = [ratelimit.take_sync(user, "typing", 2) for _ in range(4)]
    assert [bool(w) for w in room_a] == [bool(w) for w in room_b] == [False] * 3 + [True]
    assert ratelimit.take_sync(user) == 0


@override_settings(
    REDIS_URL="redis://127.0.0.1:1/0", CHAT_RATE_LIMIT_MESSAGES=3, CHAT_RATE_LIMIT_PER_SECOND=0.01
)
def test_redis_unreachable_falls_back_to_a_local_bucket_not_an_error():
    user = fresh_user()
    assert [bool(ratelimit.take_sync(user)) for _ in range(4)] == [False] * 3 + [True]


def test_local_bucket_refills_and_reports_the_wait():
    request = [("k", 2.0, 0.5)]
    ratelimit._local_buckets.pop("k", None)
    assert ratelimit.take_local(request, now=100.0) == 0
    assert ratelimit.take_local(request, now=100.0) == 0
    assert ratelimit.take_local(request, now=100.0) == 2.0  # one token at 0.5/s
    assert ratelimit.take_local(request, now=101.0) == 1.0  # half refilled
    assert ratelimit.take_local(request, now=102.0) == 0


@override_settings(
    CHAT_RATE_LIMIT_MESSAGES=4,
    CHAT_RATE_LIMIT_PER_SECOND=0.01,
    RATE_LIMIT_READ=2,
    RATE_LIMIT_READ_PER_SECOND=0.01,
    RATE_LIMIT_INVITE=1,
    RATE_LIMIT_INVITE_PER_SECOND=0.01,
)
def test_one_batch_of_mixed_budgets_counts_each_take_in_order():
    user = fresh_user()
    budgets = ["write", "read", "invite", "write", "read", "read", "invite", "write", "write"]

    async def together():
        return await asyncio.gather(*(ratelimit.take(user, b) for b in budgets))

    allowed = [w == 0 for w in asyncio.run(together())]
    # write bucket 4 (the invite took one), read 2, invite 1: in arrival order.
    assert allowed == [True, True, True, True, True, False, False, True, False]
    assert ratelimit._script_args([ratelimit.buckets(user)] * 3)[1] == [1, 3, 1, 4.0, 0.01]


def test_token_bucket_allows_the_burst_then_the_refill_rate():
    request = [("unit:burst", 3.0, 2.0)]
    ratelimit._local_buckets.pop("unit:burst", None)
    allowed = [ratelimit.take_local(request, now=100.0) == 0 for _ in range(5)]
    assert allowed == [True, True, True, False, False]
    assert ratelimit.take_local(request, now=100.5) == 0  # one token back
    assert ratelimit.take_local(request, now=100.5) > 0
    assert [ratelimit.take_local(request, now=200.0) == 0 for _ in range(4)] == [
        True,
        True,
        True,
        False,
    ]
