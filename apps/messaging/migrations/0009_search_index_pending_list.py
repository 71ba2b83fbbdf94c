"""PostgreSQL: the search index's pending list is limited to
apps.messaging.search.PG_PENDING_LIST_KB (256 kB, not the server's 4 MB default), so the merge
an INSERT does when the list is full is short (the send path's batches waited 150-230 ms on
it). A storage parameter: no rewrite, no lock beyond a moment's. SQLite: nothing to do.
"""

from django.db import migrations


def limit(apps, schema_editor):
    from apps.messaging import search

    search.set_pending_list_limit(schema_editor.connection)


def reset(apps, schema_editor):
    from apps.messaging import search

    search.set_pending_list_limit(schema_editor.connection, reset=True)


class Migration(migrations.Migration):
    dependencies = [("messaging", "0008_search_text_without_markup")]

    operations = [migrations.RunPython(limit, reset)]
