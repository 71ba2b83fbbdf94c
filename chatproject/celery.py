import os

from celery import Celery
from celery.signals import (
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")

app = Celery("chatproject")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_init.connect
def make_filesystem_queue_folders(sender=None, **kwargs):
    """Embedded mode's filesystem transport needs its folders before the worker starts."""
    from django.conf import settings

    if settings.CELERY_BROKER_URL.startswith("filesystem"):
        options = settings.CELERY_BROKER_TRANSPORT_OPTIONS
        for key in ("data_folder_in", "data_folder_out", "processed_folder", "control_folder"):
            os.makedirs(options[key], exist_ok=True)


@worker_init.connect
def keep_database_pool_between_tasks(sender=None, **kwargs):
    """Tasks return their connections to Django's pool instead of closing the pool.

    Celery's Django fixup closes the whole psycopg pool of a prefork child before and after
    every task (celery/celery#10554), so every task opened new PostgreSQL connections: at a
    thousand events a second that was a large share of the outbox publisher's CPU. Each
    task's connections are still closed at its boundaries (back to the pool, which health-
    checks them on checkout); pools inherited across the fork are still closed by the fixup
    (worker_process_init), and a child closes its own pool at shutdown (stop_kafka_producer
    below). Runs after the fixup's own worker_init handler (connected first, with the app).
    """
    from celery.fixups.django import DjangoWorkerFixup

    for fixup in getattr(app, "_fixups", ()):
        worker_fixup = getattr(fixup, "_worker_fixup", None)
        if isinstance(worker_fixup, DjangoWorkerFixup):
            worker_fixup.close_database = return_database_connections


def return_database_connections(**kwargs):
    """Close this thread's database connections: with a pool, each goes back to it."""
    from django.db import DatabaseError, InterfaceError, connections

    for conn in connections.all(initialized_only=True):
        try:
            conn.close()
        except InterfaceError:
            pass
        except DatabaseError as exc:  # as the fixup: an already closed connection is fine
            if "closed" not in str(exc) and "not connected" not in str(exc):
                raise


def close_database_pools() -> None:
    from django.db import connections

    for conn in connections.all(initialized_only=True):
        if hasattr(conn, "close_pool"):
            try:
                conn.close_pool()
            except Exception:  # noqa: BLE001 - shutting down
                pass


# The signal handlers import Django and the apps inside: this module loads with chatproject/
# (its __init__), before Django's settings and apps are ready.


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
    """Flush and close this process's producer (unacked rows stay in the outbox), then the
    database pool."""
    from apps.events import kafka

    kafka.close_producer()
    close_database_pools()


@worker_init.connect
def survive_a_broken_close_after_connection_loss(sender=None, **kwargs):
    """Keep the worker alive through a lost Redis broker connection: leave the lost connection
    to the garbage collector instead of closing it, as celery before 5.7 did.

    celery 5.7.0's consumer closes the broken connection before it reconnects
    (Consumer.on_connection_error_after_connected, the one caller of ignore_errors in that
    module). With kombu 5.7.0 and Redis still down, that close fails (restoring the unacked
    messages through a transport already gone), and once closed, the acks of tasks that finish
    afterwards go to a channel whose transport is None: both raise AttributeError ('NoneType'
    object has no attribute 'hostname'), which ignore_errors and the ack's error handling do
    not expect, and the worker exits with "Unrecoverable error" (the chaos run's Redis restart
    met both). Left open, the old channel's acks reconnect or fail as connection errors (logged,
    the message redelivered after the visibility timeout; our tasks are idempotent), and the
    consumer reconnects as after any connection loss."""
    import logging

    from celery.worker.consumer import consumer
    from kombu.common import ignore_errors

    if getattr(consumer.ignore_errors, "leaves_the_lost_connection", False):
        return

    def leave_the_lost_connection(conn, fun=None, *args, **kwargs):
        if fun is None:  # the context-manager form (not used there today)
            return ignore_errors(conn)
        logging.getLogger(__name__).info("broker connection lost: reconnecting (old one left)")
        return None

    leave_the_lost_connection.leaves_the_lost_connection = True
    consumer.ignore_errors = leave_the_lost_connection
