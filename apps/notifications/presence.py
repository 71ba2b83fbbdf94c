"""Is a user online? The one question the notification handler asks about presence.

The realtime side owns presence (apps.users.presence). Until it is there this falls back to
the Redis key `{CHANNELS_PREFIX}:presence:<user_id>` that it is expected to keep while the
user has an open socket. No Redis (embedded mode): nobody counts as online.
"""

from __future__ import annotations

import logging

from django.conf import settings

logger = logging.getLogger(__name__)


def is_online(user_id: int) -> bool:
    try:
        from apps.users import presence
    except ImportError:
        presence = None
    for name in ("is_online", "online"):
        check = getattr(presence, name, None)
        if callable(check):
            return bool(check(user_id))
    if not settings.REDIS_URL:
        return False
    from apps.events.outbox import redis_client

    try:
        return bool(redis_client().exists(f"{settings.CHANNELS_PREFIX}:presence:{user_id}"))
    except Exception:  # noqa: BLE001 - unknown presence: notify rather than miss it
        logger.warning("presence unavailable; treating user %s as offline", user_id)
        return False
