"""Celery tasks of messaging. Retention's retry policy is the schedule: a room that failed is
purged again on the next run."""

from celery import shared_task


@shared_task(ignore_result=True)
def purge_history():
    """Celery beat (retention-purge): remove what is past each room's retention."""
    from .retention import history_purge

    history_purge()
