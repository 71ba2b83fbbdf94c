import os

from celery import Celery
from celery.signals import worker_process_init, worker_process_shutdown, worker_shutdown

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")

app = Celery("chatproject")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_process_init.connect
def start_kafka_producer(**kwargs):
    """One producer per worker process, made after the fork (never shared with the parent)."""
    import logging

    from django.conf import settings

    if not settings.KAFKA_BOOTSTRAP_SERVERS:
        return
    from apps.events import kafka

    try:
        kafka.get_producer()
    except Exception:  # noqa: BLE001 - broker down at start: the first publish retries
        logging.getLogger(__name__).warning("Kafka producer not started yet", exc_info=True)


@worker_process_shutdown.connect
@worker_shutdown.connect
def stop_kafka_producer(**kwargs):
    """Flush and close this process's producer (unacked rows stay in the outbox)."""
    from apps.events import kafka

    kafka.close_producer()
