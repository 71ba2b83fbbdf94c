"""Celery tasks of notifications: the mention worker (kicked after commits, and by beat) and
the unread-notification email (beat)."""

import logging

from celery import shared_task
from django.conf import settings

from apps.events.tasks import enqueue_debounced

logger = logging.getLogger(__name__)


def kick_key() -> str:
    return f"{settings.CHANNELS_PREFIX}:notify:kick"


def kick() -> None:
    """Wake the mention worker (at most one queued at a time)."""
    enqueue_debounced(notify_mentions, kick_key(), settings.NOTIFY_KICK_DEBOUNCE_MS)


@shared_task(ignore_result=True)
def notify_mentions():
    """Make the notifications of everything committed since the rooms' cursors.

    The kick key stays set while this drains (commits meanwhile enqueue nothing); it is
    cleared before one last pass, so an event committed before the clear is in that pass and
    one committed after it enqueues a new task (the outbox publisher's rule)."""
    from apps.core.redis import sync_client as redis_client

    from .mentions import process_pending

    while process_pending().more:
        pass
    client = redis_client()
    if client is not None:
        try:
            client.delete(kick_key())
        except Exception:  # noqa: BLE001 - the key expires on its own
            logger.debug("could not clear the notify kick key", exc_info=True)
    process_pending()


@shared_task(ignore_result=True)
def email_unread_notifications():
    """Celery beat (notify-email): one email per user listing their notifications unread for
    NOTIFY_EMAIL_AFTER_MINUTES and not read in the room since (apps.notifications.email)."""
    from .email import send_unread

    send_unread()
