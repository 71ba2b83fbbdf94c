"""Is a user online? The one question the notifications ask about presence (@here).

apps.users.presence owns presence; its Redis store keeps each user's last published status
(online / away / offline) under `{CHANNELS_PREFIX}:presence:<user id>:status` (see
RedisPresence.status). Its API is async and per event loop, so this synchronous handler reads
that key directly. `away` is not online (@here leaves them out). Embedded mode
keeps presence in the server's own memory, out of a consumer process's sight: nobody counts
as online there.
"""

from __future__ import annotations

import logging

from django.conf import settings

from apps.core.redis import sync_client

logger = logging.getLogger(__name__)

ONLINE = "online"


def status_key(user_id: int) -> str:
    return f"{settings.CHANNELS_PREFIX}:presence:{user_id}:status"


def is_online(user_id: int) -> bool:
    if not settings.REDIS_URL:
        return False
    try:
        value = sync_client().get(status_key(user_id))
    except Exception:  # noqa: BLE001 - unknown presence: notify rather than miss it
        logger.warning("presence unavailable; treating user %s as offline", user_id)
        return False
    return (value.decode() if isinstance(value, bytes) else value) == ONLINE


def online_ids(user_ids) -> set[int]:
    """The users of these who are online now (one MGET); empty when presence is unknown."""
    user_ids = list(user_ids)
    if not settings.REDIS_URL or not user_ids:
        return set()
    try:
        values = sync_client().mget([status_key(uid) for uid in user_ids])
    except Exception:  # noqa: BLE001 - unknown presence: @here reaches nobody this time
        logger.warning("presence unavailable; @here notifies no one")
        return set()
    return {
        uid
        for uid, value in zip(user_ids, values, strict=True)
        if (value.decode() if isinstance(value, bytes) else value) == ONLINE
    }
