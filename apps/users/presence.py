"""Presence: online / away / offline per user, from the heartbeats of all their sockets.

Every open socket has an entry `<socket id> -> "<status>:<expires ms>"` in the Redis hash
`<prefix>:presence:<user id>`; its server process refreshes it on each heartbeat sweep, so the
entry of a socket whose process died expires by itself. A user's status is `online` if any live
socket is online, `away` if all live sockets are away, else `offline`. The last published status
is kept next to the hash; one Lua script updates the entries (of one user or, for a refresh,
of many in one call) and says whether each status changed, so exactly one process publishes each
change. The sorted set `<prefix>:presence:due` holds, per
user, the earliest expiry of their sockets; any process sweeps it to notice users whose sockets
all expired (their server was killed) and publishes their `offline`.

Without REDIS_URL (embedded mode, one process) the same rules run on in-process dicts.
"""

from __future__ import annotations

import asyncio
import time

from django.conf import settings

from apps.core.redis import async_client

ONLINE, AWAY, OFFLINE = "online", "away", "offline"

_UPDATE = """
-- Several users in one call (same op, time and expiry): KEYS = due, then hash and status key
-- per user; ARGV = now, op, max sockets, expiry, then user id and "<socket>:<status> ..." per
-- user. Returns changed (1, 0, or -1 for the socket limit), status, live sockets per user.
local due = KEYS[1]
local now, op, maxs, exp = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])

local function update(h, st, uid, sockets)
  local touched, given = {}, {}
  for item in string.gmatch(sockets, '[^ ]+') do
    local sep = string.find(item, ':', 1, true)
    local f = string.sub(item, 1, sep - 1)
    touched[f] = true
    given[#given + 1] = {f, string.sub(item, sep + 1)}
  end
  local all = redis.call('HGETALL', h)
  local count, online, minexp, maxexp = 0, 0, nil, 0
  for i = 1, #all, 2 do
    local f, v = all[i], all[i + 1]
    local sep = string.find(v, ':', 1, true)
    local s, e = string.sub(v, 1, sep - 1), tonumber(string.sub(v, sep + 1))
    if e <= now or touched[f] then
      if e <= now or op == 'del' then redis.call('HDEL', h, f) end
    else
      count = count + 1
      if s == 'online' then online = online + 1 end
      if minexp == nil or e < minexp then minexp = e end
      if e > maxexp then maxexp = e end
    end
  end
  if op == 'add' and maxs > 0 and count >= maxs then
    return -1, redis.call('GET', st) or 'offline', count
  end
  if (op == 'add' or op == 'ref') and #given > 0 then
    local fields = {}
    for _, g in ipairs(given) do
      fields[#fields + 1] = g[1]
      fields[#fields + 1] = g[2] .. ':' .. exp
      count = count + 1
      if g[2] == 'online' then online = online + 1 end
    end
    redis.call('HSET', h, unpack(fields))
    if minexp == nil or exp < minexp then minexp = exp end
    if exp > maxexp then maxexp = exp end
  end
  local new = 'offline'
  if online > 0 then new = 'online' elseif count > 0 then new = 'away' end
  if count > 0 then
    redis.call('PEXPIRE', h, maxexp - now + 1000)
    redis.call('ZADD', due, minexp, uid)
  else
    redis.call('DEL', h)
    redis.call('ZREM', due, uid)
  end
  local old = redis.call('GET', st) or 'offline'
  if new == old then return 0, new, count end
  if new == 'offline' then redis.call('DEL', st) else redis.call('SET', st, new) end
  return 1, new, count
end

local out = {}
for u = 1, (#ARGV - 4) / 2 do
  local changed, new, count = update(KEYS[2 * u], KEYS[2 * u + 1], ARGV[3 + 2 * u], ARGV[4 + 2 * u])
  out[#out + 1] = changed
  out[#out + 1] = new
  out[#out + 1] = count
end
return out
"""


def _prefix() -> str:
    return f"{settings.CHANNELS_PREFIX}:presence"


def _now_ms() -> int:
    return int(time.time() * 1000)


class RedisPresence:
    def __init__(self, client):
        self.client = client
        self.script = client.register_script(_UPDATE)
        self.queue: list = []
        self.flushing = False

    def _call(self, op, users, ttl=0.0, max_sockets=0):
        """One script call for `users`: [(user id, [(socket id, status)])] (status unused for
        del), each user's sockets as one argument with one expiry for all: a refresh of 200
        users with 10 sockets each is one command of ~600 arguments, not 200 of 34."""
        p = _prefix()
        now = _now_ms()
        keys, args = [f"{p}:due"], [now, op, max_sockets, now + int(ttl * 1000)]
        for user_id, sockets in users:
            keys += [f"{p}:{user_id}", f"{p}:{user_id}:status"]
            args += [user_id, " ".join(f"{sock}:{status or '-'}" for sock, status in sockets)]
        return [u for u, _ in users], keys, args

    async def _run(self, calls):
        """Run several script calls in one round trip; returns [(user_id, changed, status,
        count)] for every user of every call, in order."""
        if not calls:
            return []
        pipe = self.client.pipeline(transaction=False)
        for _, keys, args in calls:
            await self.script(keys=keys, args=args, client=pipe)
        out = []
        for (user_ids, _, _), result in zip(calls, await pipe.execute(), strict=True):
            for i, user_id in enumerate(user_ids):
                changed, status, count = result[3 * i : 3 * i + 3]
                status = status.decode() if isinstance(status, bytes) else status
                out.append((user_id, int(changed), status, int(count)))
        return out

    async def _one(self, call):
        """One user's update, batched with the others of this moment: a burst of connects or
        disconnects costs one pipelined round trip per 500 sockets, not one each."""
        future = asyncio.get_running_loop().create_future()
        self.queue.append((call, future))
        if not self.flushing:
            self.flushing = True
            asyncio.get_running_loop().create_task(self._flush())
        return await future

    async def _flush(self):
        try:
            while self.queue:
                batch, self.queue = self.queue[:500], self.queue[500:]
                try:
                    results = await self._run([call for call, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self.flushing = False

    async def connect(self, user_id, socket_id, status, ttl, max_sockets):
        _, changed, new, count = await self._one(
            self._call("add", [(user_id, [(socket_id, status)])], ttl, max_sockets)
        )
        return changed, new, count

    async def refresh(self, entries, ttl):
        """Refresh many sockets: 200 users per script call, 10 calls per round trip."""
        by_user: dict[int, list] = {}
        for user_id, socket_id, status in entries:
            by_user.setdefault(user_id, []).append((socket_id, status))
        users = list(by_user.items())
        calls = [self._call("ref", users[i : i + 200], ttl) for i in range(0, len(users), 200)]
        changes = []
        for start in range(0, len(calls), 10):
            results = await self._run(calls[start : start + 10])
            changes += [(u, new) for u, changed, new, _ in results if changed == 1]
        return changes

    async def disconnect(self, user_id, socket_id):
        _, changed, new, _ = await self._one(self._call("del", [(user_id, [(socket_id, "")])]))
        return new if changed == 1 else None

    async def sweep(self, limit=200):
        """Users with an expired socket entry: recompute them; returns the changed ones."""
        due = await self.client.zrangebyscore(f"{_prefix()}:due", "-inf", _now_ms(), 0, limit)
        results = await self._run([self._call("chk", [(int(u), []) for u in due])] if due else [])
        return [(u, new) for u, changed, new, _ in results if changed == 1]

    async def status(self, user_id) -> str:
        value = await self.client.get(f"{_prefix()}:{user_id}:status")
        return value.decode() if value else OFFLINE


class LocalPresence:
    """The same rules in one process (embedded mode: no Redis)."""

    def __init__(self):
        self.sockets: dict[int, dict[str, tuple[str, int]]] = {}
        self.published: dict[int, str] = {}

    def _update(self, user_id, op, socket_id="", status="", ttl=0.0, max_sockets=0):
        now = _now_ms()
        entries = {
            s: v for s, v in self.sockets.get(user_id, {}).items() if v[1] > now and s != socket_id
        }
        if op == "add" and max_sockets and len(entries) >= max_sockets:
            return -1, self.published.get(user_id, OFFLINE), len(entries)
        old_entry = self.sockets.get(user_id, {}).get(socket_id)
        if op in ("add", "ref"):
            entries[socket_id] = (status, now + int(ttl * 1000))
        elif op == "chk" and old_entry and old_entry[1] > now:
            entries[socket_id] = old_entry
        if entries:
            self.sockets[user_id] = entries
        else:
            self.sockets.pop(user_id, None)
        new = OFFLINE
        if any(s == ONLINE for s, _ in entries.values()):
            new = ONLINE
        elif entries:
            new = AWAY
        old = self.published.get(user_id, OFFLINE)
        if new == OFFLINE:
            self.published.pop(user_id, None)
        else:
            self.published[user_id] = new
        return (0 if new == old else 1), new, len(entries)

    async def connect(self, user_id, socket_id, status, ttl, max_sockets):
        return self._update(user_id, "add", socket_id, status, ttl, max_sockets)

    async def refresh(self, entries, ttl):
        out = []
        for u, s, st in entries:
            changed, new, _ = self._update(u, "ref", s, st, ttl)
            if changed == 1:
                out.append((u, new))
        return out

    async def disconnect(self, user_id, socket_id):
        changed, new, _ = self._update(user_id, "del", socket_id)
        return new if changed == 1 else None

    async def sweep(self, limit=200):
        out = []
        for u in list(self.sockets)[:limit]:
            changed, new, _ = self._update(u, "chk")
            if changed == 1:
                out.append((u, new))
        return out

    async def status(self, user_id) -> str:
        return self.published.get(user_id, OFFLINE)


_local = LocalPresence()
_stores: dict = {}


def backend():
    """The presence store for this process: Redis when configured, else in-process."""
    client = async_client()
    if client is None:
        return _local
    store = _stores.get(id(client))
    if store is None or store.client is not client:
        store = _stores[id(client)] = RedisPresence(client)
    return store
