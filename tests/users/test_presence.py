"""The presence rule (apps.users.presence): in process, and the same rule in Redis."""

import asyncio
import uuid

import pytest

from apps.users.presence import LocalPresence


def test_presence_rule_across_sockets_and_expiry():
    store = LocalPresence()
    run = asyncio.run
    assert run(store.connect(7, "a", "online", 60, 2)) == (1, "online", 1)
    assert run(store.connect(7, "b", "away", 60, 2)) == (0, "online", 2)
    assert run(store.connect(7, "c", "online", 60, 2))[0] == -1  # socket limit
    assert run(store.refresh([(7, "a", "away")], 60)) == [(7, "away")]
    assert run(store.disconnect(7, "a")) is None  # b is still there, away
    assert run(store.refresh([(7, "b", "away")], -1)) == []  # b expires now
    assert run(store.sweep()) == [(7, "offline")]
    assert run(store.status(7)) == "offline"


async def _presence_scenario(store, u, v):
    """The presence rule step by step (users u and v); returns every answer."""
    out = [
        await store.connect(u, "a", "online", 60, 2),
        await store.connect(u, "b", "away", 60, 2),
        (await store.connect(u, "c", "online", 60, 2))[0],  # socket limit
        # one refresh for several sockets of several users, one of them new
        await store.refresh([(u, "a", "away"), (u, "b", "away"), (v, "x", "online")], 60),
        await store.disconnect(u, "a"),
        await store.refresh([(u, "b", "away")], -1),  # b expires now
        [change for change in await store.sweep() if change[0] in (u, v)],
        await store.status(u),
        await store.status(v),
        await store.disconnect(v, "x"),
    ]
    # A refresh of more users than one script call takes (200), two sockets each.
    many = [
        (w, f"s{w}-{k}", "online" if w % 3 else "away")
        for w in range(v + 1, v + 451)
        for k in range(2)
    ]
    out.append(sorted(await store.refresh(many, 60)))
    out.append(await store.refresh(many, 60))  # nothing changed
    out.append(
        sorted(
            filter(None, await asyncio.gather(*(store.disconnect(w, sock) for w, sock, _ in many)))
        )
    )
    return out


@pytest.mark.services
def test_presence_rule_in_redis_is_the_local_rule():
    from apps.core.redis import async_client
    from apps.users.presence import RedisPresence

    u, v = (uuid.uuid4().int % 10**12 * 1000 + 10**15 for _ in range(2))
    local = asyncio.run(_presence_scenario(LocalPresence(), u, v))
    many = range(v + 1, v + 451)
    assert local == [
        (1, "online", 1),
        (0, "online", 2),
        -1,
        [(u, "away"), (v, "online")],
        None,
        [],
        [(u, "offline")],
        "offline",
        "online",
        "offline",
        [(w, "online" if w % 3 else "away") for w in many],
        [],
        ["offline"] * 450,
    ]

    async def in_redis():
        client = async_client()
        try:
            return await _presence_scenario(RedisPresence(client), u, v)
        finally:
            await client.aclose()

    assert asyncio.run(in_redis()) == local
