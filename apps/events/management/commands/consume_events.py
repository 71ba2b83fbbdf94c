from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from apps.events.consumer import GroupConsumer
from apps.events.handlers import handler_for


class Command(BaseCommand):
    help = (
        "Run a Kafka consumer group over the events topic with a pluggable handler. Offsets are "
        "committed after the handler succeeded; events are deduplicated on their id; SIGTERM "
        "finishes the batch, commits and leaves the group."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--group", required=True, help="group name (Kafka group id: KAFKA_TOPIC_PREFIX.NAME)"
        )
        parser.add_argument(
            "--handler",
            default=None,
            help="dotted path of the handler class (default: KAFKA_CONSUMER_HANDLERS[group])",
        )

    def handle(self, *args, group, handler, **options):
        if not group.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise CommandError("--group may contain letters, digits, '.', '-' and '_' only")
        try:
            instance = handler_for(group, handler)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if not settings.KAFKA_BOOTSTRAP_SERVERS:
            raise CommandError("Kafka is not configured (KAFKA_BOOTSTRAP_SERVERS)")
        from kafka.errors import KafkaError

        runner = GroupConsumer(group, instance, stdout=self.stdout)
        runner.install_signal_handlers()
        try:
            runner.run()
        except KafkaError as exc:
            raise CommandError(f"Kafka error: {exc}") from exc
