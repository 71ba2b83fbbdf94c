from django.apps import AppConfig


class EventsConfig(AppConfig):
    name = "apps.events"
    label = "events"

    def ready(self):
        from django.db.models.signals import post_migrate

        post_migrate.connect(_outbox_triggers_after_migrate, sender=self)


def _outbox_triggers_after_migrate(using="default", **kwargs):
    """Put back the outbox triggers a table rebuild dropped (SQLite; apps.events.triggers).
    Only once the migration that makes the outbox table has run."""
    from django.db import connections

    from . import triggers

    connection = connections[using]
    if triggers.OUTBOX_TABLE in connection.introspection.table_names():
        triggers.install(connection)
