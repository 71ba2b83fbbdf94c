"""Celery tasks of the Kafka bridge. Their retry policy is the outbox's: a failed row keeps its
error and a backoff time, and the periodic sweep picks it up again (no deadline)."""

import logging

from celery import shared_task

logger = logging.getLogger(__name__)


@shared_task(ignore_result=True)
def publish_outbox():
    """After-commit kick: publish everything pending, and what commits while it runs.

    The kick key stays set while the task drains, so commits meanwhile enqueue no new task
    (until the key's debounce expires); when the outbox has stayed empty for IDLE_SECONDS
    the key is cleared and the outbox read once more: an event committed before the clear
    is in that read, one committed after it enqueues a new kick.
    """
    from .outbox import clear_kick, kick_publisher, renew_kick
    from .publisher import IDLE_SECONDS, publish_pending

    result = publish_pending(idle_seconds=IDLE_SECONDS, before_last_read=clear_kick,
                             keep_alive=renew_kick)
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
    from .outbox import outbox_status
    from .publisher import publish_pending

    result = publish_pending(wait_for_lock=False)
    status = outbox_status()
    if result.published or result.failed:
        logger.info(
            "outbox sweep: published %d, held back %d, pending %d, lag %.1fs",
            result.published, result.failed, status["pending"],
            status["oldest_pending_age_seconds"],
        )
