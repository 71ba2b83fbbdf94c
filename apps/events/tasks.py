"""Celery tasks of the Kafka bridge and the after-commit kick that enqueues them.

Their retry policy is the outbox's: a failed row keeps its error and a backoff time, and the
periodic sweep picks it up again (no deadline). Dependencies run one way: services → tasks →
outbox (the kick key) / publisher.
"""

import logging
from concurrent.futures import ThreadPoolExecutor

from celery import shared_task
from django.conf import settings

from . import fanout
from .outbox import claim, clear_kick, kick_key, outbox_status, renew_kick
from .publisher import IDLE_SECONDS, publish_pending

logger = logging.getLogger(__name__)


def enqueue_debounced(task, key: str, debounce_ms: int) -> None:
    """Enqueue the Celery task unless one is queued already under `key` (outbox.claim; the
    task clears or renews the key). The broker down: log it, the task's periodic sweep does
    the work later."""
    if not claim(key, debounce_ms):
        return  # a kick is queued and has not read its input yet
    try:
        # No publish retries: a down Celery broker must not hold up the request that committed.
        task.apply_async(retry=False)
    except Exception:  # noqa: BLE001 - the periodic sweep does the work later
        logger.warning("could not enqueue %s", task.name, exc_info=True)


def kick_publisher() -> None:
    """Ask a Celery worker to publish pending outbox rows (at most one queued kick at a time)."""
    if not settings.KAFKA_BOOTSTRAP_SERVERS:
        return
    enqueue_debounced(publish_outbox, kick_key(), settings.OUTBOX_KICK_DEBOUNCE_MS)


_kicker = None


def soon(func) -> None:
    """Run an after-commit kick. In a server process it runs on one background thread, so the
    request or socket thread that committed does not wait on Redis or the Celery broker;
    elsewhere (workers, commands, tests) it runs inline."""
    global _kicker
    if fanout.server_loop() is None:
        func()
        return
    if _kicker is None:
        _kicker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-kick")
    _kicker.submit(func)


def kick_publisher_soon() -> None:
    """The outbox's after-commit kick (see soon)."""
    soon(kick_publisher)


@shared_task(ignore_result=True)
def publish_outbox():
    """After-commit kick: publish everything pending, and what commits while it runs.

    The kick key stays set while the task drains, so commits meanwhile enqueue no new task
    (until the key's debounce expires); when the outbox has stayed empty for IDLE_SECONDS
    the key is cleared and the outbox read once more: an event committed before the clear
    is in that read, one committed after it enqueues a new kick.
    """
    result = publish_pending(
        idle_seconds=IDLE_SECONDS, before_last_read=clear_kick, keep_alive=renew_kick
    )
    if not result.locked or result.more:
        # Locked out: the holder may have finished its last read before our events.
        # Stopped for time: let other tasks on this worker run, then go on.
        clear_kick()
        kick_publisher()
    elif not result.last_read:
        clear_kick()  # stopped on a failure: the sweep retries, the next commit kicks


@shared_task(ignore_result=True)
def sweep_outbox():
    """Celery beat (outbox-sweep): publish what lost kicks or outages left, refresh the gauges.

    It does not wait for a running publisher (that one drains what is there): under steady
    traffic a sweep every few seconds that waited for the drain's lock would hold every
    worker process, and any other task (an account erasure) would queue behind them."""
    result = publish_pending(wait_for_lock=False)
    status = outbox_status()
    if result.published or result.failed:
        logger.info(
            "outbox sweep: published %d, held back %d, pending %d, lag %.1fs",
            result.published,
            result.failed,
            status["pending"],
            status["oldest_pending_age_seconds"],
        )
