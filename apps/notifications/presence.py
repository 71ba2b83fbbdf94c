"""Is a user online? The one question the notification handler asks about presence.

apps.users.presence owns presence; its Redis store keeps each user's last published status
(online / away / offline) under `{CHANNELS_PREFIX}:presence:<user id>:status` (see
RedisPresence.status). Its API is async and per event loop, so this synchronous handler reads
that key directly. `away` is not online: an away user gets the notification. Embedded mode
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
