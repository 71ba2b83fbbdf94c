"""The full-text index of message bodies (PROTOCOL §8), one per database:

- PostgreSQL: a STORED generated column `search_vector = to_tsvector(SEARCH_CONFIG, body)`
  and a GIN index on it. The database computes it in the INSERT or UPDATE that writes the
  body, so the send path has no extra statement and a redaction (body = '') empties it in
  the same statement. Adding the column rewrites the table (docs/operations.md).
- SQLite (embedded mode): an FTS5 table over the bodies, kept by triggers
  (apps.messaging.search.ensure_sqlite_index, also run after every migrate: SQLite's schema
  editor rebuilds a table to alter it, which drops its triggers).
"""

from django.db import migrations


def create(apps, schema_editor):
    from apps.messaging import search

    search.create_index(schema_editor.connection)


def drop(apps, schema_editor):
    from apps.messaging import search

    search.drop_index(schema_editor.connection)


class Migration(migrations.Migration):
    dependencies = [("messaging", "0006_backfill_threads")]

    operations = [migrations.RunPython(create, drop)]
