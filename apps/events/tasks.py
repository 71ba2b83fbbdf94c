"""Celery tasks of the Kafka bridge (first cut; the full bridge lands with issue 5)."""

from celery import shared_task


@shared_task(ignore_result=True)
def publish_outbox():
    from .publisher import publish_pending

    publish_pending()


@shared_task(ignore_result=True)
def sweep_outbox():
    from .publisher import publish_pending

    publish_pending()
