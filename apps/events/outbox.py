"""Waking the Kafka publisher after a commit, and the outbox's health figures.

The kick is debounced so a thousand sends a second do not become a thousand Celery tasks:
`SET <prefix>:outbox:kick 1 NX PX <debounce>` and enqueue only when the key was set. The
task drains the outbox with the key set (commits meanwhile enqueue nothing), and once it has
stayed empty a moment deletes the key and reads the outbox once more: an event committed
before the delete is in that read, one committed after it enqueues a new task. Whatever is
missed here (a lost task, Redis or the Celery broker down) the periodic sweep publishes.
"""

from __future__ import annotations

import logging

from django.conf import settings

logger = logging.getLogger(__name__)

_redis = None


def kick_key() -> str:
    return f"{settings.CHANNELS_PREFIX}:outbox:kick"


def redis_client():
    """A small-timeout Redis client for the kick key (None in embedded mode)."""
    global _redis
    if not settings.REDIS_URL:
        return None
    if _redis is None:
        import redis

        _redis = redis.Redis.from_url(
            settings.REDIS_URL, socket_timeout=0.5, socket_connect_timeout=0.5
        )
    return _redis


def kick_publisher() -> None:
    """Ask a Celery worker to publish pending outbox rows (at most one queued kick at a time)."""
    if not settings.KAFKA_BOOTSTRAP_SERVERS:
        return
    from .tasks import publish_outbox

    enqueue_debounced(publish_outbox, kick_key(), settings.OUTBOX_KICK_DEBOUNCE_MS)


def enqueue_debounced(task, key: str, debounce_ms: int) -> None:
    """Enqueue the task unless one is queued already: `SET key 1 NX PX debounce_ms` first
    (the task clears or renews the key, see the module docstring). Redis down: enqueue anyway;
    the broker down: log it (the task's periodic sweep does the work later)."""
    client = redis_client()
    if client is not None:
        try:
            if not client.set(key, 1, nx=True, px=debounce_ms):
                return  # a kick is queued and has not read the outbox yet
        except Exception:  # noqa: BLE001 - Redis down: enqueue anyway, the broker may be up
            logger.debug("kick key %s unavailable", key, exc_info=True)
    try:
        # No publish retries: a down Celery broker must not hold up the request that committed.
        task.apply_async(retry=False)
    except Exception:  # noqa: BLE001 - the periodic sweep does the work later
        logger.warning("could not enqueue %s", task.name, exc_info=True)


_kicker = None


def kick_publisher_soon() -> None:
    """The after-commit kick (see soon)."""
    soon(kick_publisher)


def soon(func) -> None:
    """Run an after-commit kick. In a server process it runs on one background thread, so the
    request or socket thread that committed does not wait on Redis or the Celery broker;
    elsewhere (workers, commands, tests) it runs inline."""
    global _kicker
    from . import fanout

    if fanout.server_loop() is None:
        func()
        return
    if _kicker is None:
        from concurrent.futures import ThreadPoolExecutor

        _kicker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-kick")
    _kicker.submit(func)


def renew_kick() -> None:
    """Called by the draining task: the key stays set while it drains (see the module
    docstring). Without it the key expired after OUTBOX_KICK_DEBOUNCE_MS and every commit
    of a long drain queued one more task that waited for the drain's lock, holding a worker
    process each: other tasks (an account erasure) queued minutes behind them."""
    client = redis_client()
    if client is None:
        return
    try:
        client.set(kick_key(), 1, px=settings.OUTBOX_KICK_DEBOUNCE_MS)
    except Exception:  # noqa: BLE001 - then a few more kicks are queued, nothing is lost
        logger.debug("could not renew the outbox kick key", exc_info=True)


def clear_kick() -> None:
    """Called by the task before its last read of the outbox (see the module docstring)."""
    client = redis_client()
    if client is None:
        return
    try:
        client.delete(kick_key())
    except Exception:  # noqa: BLE001 - the key expires on its own
        logger.debug("could not clear the outbox kick key", exc_info=True)


def outbox_status() -> dict:
    """Pending count and the age of the oldest unpublished event (for /readyz and the admin)."""
    from django.db.models import Count, Max, Min, Q
    from django.utils import timezone

    from .observability import OUTBOX_LAG, OUTBOX_PENDING
    from .publisher import pending_rows

    stats = pending_rows().aggregate(
        pending=Count("id"),
        oldest=Min("ts"),
        failing=Count("id", filter=~Q(last_error="")),
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
