from django.apps import AppConfig


class MessagingConfig(AppConfig):
    name = "apps.messaging"
    label = "messaging"

    def ready(self):
        from django.db.models.signals import post_migrate

        post_migrate.connect(_search_index_after_migrate, sender=self)


def _search_index_after_migrate(using="default", **kwargs):
    """SQLite: put back the FTS5 triggers a table rebuild dropped (apps.messaging.search)."""
    from django.db import connections

    from . import search

    if connections[using].vendor == "sqlite":
        search.ensure_sqlite_index(connections[using])
