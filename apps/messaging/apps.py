from django.apps import AppConfig


class MessagingConfig(AppConfig):
    name = "apps.messaging"
    label = "messaging"

    def ready(self):
        from django.db.backends.signals import connection_created
        from django.db.models.signals import post_migrate

        post_migrate.connect(_search_index_after_migrate, sender=self)
        connection_created.connect(_sqlite_search_functions)


def _sqlite_search_functions(sender=None, connection=None, **kwargs):
    """SQLite: the SQL function the FTS5 triggers call, on every connection."""
    if connection.vendor == "sqlite":
        from . import search

        search.register_sqlite_functions(connection=connection)


def _search_index_after_migrate(using="default", **kwargs):
    """SQLite: put back the FTS5 triggers a table rebuild dropped (apps.messaging.search)."""
    from django.db import connections

    from . import search

    if connections[using].vendor == "sqlite":
        search.ensure_sqlite_index(connections[using])
