"""The outbox's kick key and its health figures.

The kick that wakes the Kafka publisher after a commit (`tasks.kick_publisher`) is debounced so
a thousand sends a second do not become a thousand Celery tasks:
`SET <prefix>:outbox:kick 1 NX PX <debounce>` (`claim`) and enqueue only when the key was
set. The task drains the outbox with the key set (commits meanwhile enqueue nothing), and once
it has stayed empty a moment deletes the key and reads the outbox once more: an event committed
before the delete is in that read, one committed after it enqueues a new task. Whatever is
missed here (a lost task, Redis or the Celery broker down) the periodic sweep publishes.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db.models import Count, Max, Min, Q
from django.utils import timezone

from apps.core.redis import sync_client

from .observability import OUTBOX_LAG, OUTBOX_PENDING
from .publisher import pending_rows

logger = logging.getLogger(__name__)


def kick_key() -> str:
    return f"{settings.CHANNELS_PREFIX}:outbox:kick"


def claim(key: str, debounce_ms: int) -> bool:
    """Set a debounce key if no kick is queued under it: whether the caller should enqueue one.
    True when Redis is down or absent (enqueue anyway: the broker may be up)."""
    client = sync_client()
    if client is None:
        return True
    try:
        return bool(client.set(key, 1, nx=True, px=debounce_ms))
    except Exception:  # noqa: BLE001 - Redis down: enqueue anyway, the broker may be up
        logger.debug("kick key %s unavailable", key, exc_info=True)
        return True


def renew_kick() -> None:
    """Called by the draining task: the key stays set while it drains (see the module
    docstring). Without it the key expired after OUTBOX_KICK_DEBOUNCE_MS and every commit
    of a long drain queued one more task that waited for the drain's lock, holding a worker
    process each: other tasks (an account erasure) queued minutes behind them."""
    client = sync_client()
    if client is None:
        return
    try:
        client.set(kick_key(), 1, px=settings.OUTBOX_KICK_DEBOUNCE_MS)
    except Exception:  # noqa: BLE001 - then a few more kicks are queued, nothing is lost
        logger.debug("could not renew the outbox kick key", exc_info=True)


def clear_kick() -> None:
    """Called by the task before its last read of the outbox (see the module docstring)."""
    client = sync_client()
    if client is None:
        return
    try:
        client.delete(kick_key())
    except Exception:  # noqa: BLE001 - the key expires on its own
        logger.debug("could not clear the outbox kick key", exc_info=True)


def outbox_status() -> dict:
    """Pending count and the age of the oldest unpublished event (for /readyz and the admin)."""
    stats = pending_rows().aggregate(
        pending=Count("pk"),
        oldest=Min("ts"),
        failing=Count("pk", filter=~Q(last_error="")),
        max_attempts=Max("publish_attempts"),
    )
    oldest = stats["oldest"]
    lag = max(0.0, (timezone.now() - oldest).total_seconds()) if oldest else 0.0
    OUTBOX_PENDING.set(stats["pending"])
    OUTBOX_LAG.set(lag)
    return {
        "ok": True,
        "pending": stats["pending"],
        "oldest_pending_age_seconds": round(lag, 3),
        "failing": stats["failing"],
        "max_attempts": stats["max_attempts"] or 0,
        "publishing": bool(settings.KAFKA_BOOTSTRAP_SERVERS),
    }
