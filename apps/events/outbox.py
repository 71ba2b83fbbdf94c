"""Waking the Kafka publisher after a commit. The beat sweep covers anything missed here."""

import logging

logger = logging.getLogger(__name__)


def kick_publisher() -> None:
    """Ask a Celery worker to publish pending outbox rows."""
    from django.conf import settings

    if not settings.KAFKA_BOOTSTRAP_SERVERS:
        return
    try:
        from .tasks import publish_outbox

        publish_outbox.delay()
    except Exception:  # broker down: the periodic sweep publishes the rows later
        logger.warning("could not enqueue the outbox publisher", exc_info=True)


def outbox_status() -> dict:
    """Pending count and the age of the oldest unpublished event (for /readyz and the admin)."""
    from django.conf import settings
    from django.utils import timezone

    from .catalogue import CATALOGUE
    from .models import Event

    kafka_types = [t for t, spec in CATALOGUE.items() if spec.kafka]
    pending = Event.objects.unpublished().filter(type__in=kafka_types)
    oldest = pending.order_by("ts").values_list("ts", flat=True).first()
    lag = (timezone.now() - oldest).total_seconds() if oldest else 0.0
    return {
        "ok": True,
        "pending": pending.count(),
        "oldest_pending_age_seconds": round(lag, 3),
        "publishing": bool(settings.KAFKA_BOOTSTRAP_SERVERS),
    }
