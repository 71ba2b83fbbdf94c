from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from apps.events.kafka import ensure_topics


class Command(BaseCommand):
    help = "Create the Kafka topics the chat publishes to (KAFKA_TOPIC_PREFIX, KAFKA_PARTITIONS)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--wait", type=float, default=0.0, help="seconds to wait for the broker"
        )

    def handle(self, *args, wait, **options):
        if not settings.KAFKA_BOOTSTRAP_SERVERS:
            self.stdout.write("Kafka is not configured (KAFKA_BOOTSTRAP_SERVERS); nothing to do.")
            return
        from kafka.errors import KafkaError

        try:
            created = ensure_topics(wait_seconds=wait)
        except KafkaError as exc:
            raise CommandError(
                f"could not reach Kafka at {settings.KAFKA_BOOTSTRAP_SERVERS}: {exc}"
            ) from exc
        topic = settings.KAFKA_EVENTS_TOPIC
        state = "created" if created else "already exists"
        self.stdout.write(f"Topic {topic} ({settings.KAFKA_PARTITIONS} partitions): {state}.")
