"""Celery tasks of messaging: retention (its retry policy is the schedule: a room that failed
is purged again on the next run), the erasure of an account's history, and the sweep that
finishes erasures whose task was never queued (the broker was down) or gave up."""

from celery import shared_task
from django.db import DatabaseError

from .erasure import erase_history
from .retention import history_purge


@shared_task(ignore_result=True)
def purge_history():
    """Celery beat (retention-purge): remove what is past each room's retention."""
    history_purge()


@shared_task(bind=True, ignore_result=True, max_retries=None, acks_late=True)
def erase_account_history(self, user_id: int):
    """Redact an erased account's messages and rename it in the log; retried on a database
    error (every step is idempotent, so a retry or a redelivery only finishes the work)."""
    try:
        erase_history(user_id=user_id)
    except DatabaseError as exc:
        raise self.retry(exc=exc, countdown=5) from exc


@shared_task(ignore_result=True)
def resume_erasures():
    """Celery beat (erasure-sweep): queue the erasure again for every erased account whose
    history still holds a message not redacted, erased at least ERASURE_SWEEP_SECONDS ago (an
    erasure requested while the broker was down completes; a running one is left alone)."""
    from django.conf import settings

    from .erasure import unfinished_erasures

    for user_id in unfinished_erasures(older_than=settings.ERASURE_SWEEP_SECONDS):
        erase_account_history.delay(user_id)
