"""SQLite (embedded mode): the FTS5 table holds its own copy of the text it indexes, the body
with what PostgreSQL's parser takes for tags and entities replaced by a space
(apps.messaging.search.search_text), so a phrase matches across `<b>…</b>` on both databases.
The external-content table of 0007 is replaced and filled again. PostgreSQL: nothing to do.
"""

from django.db import migrations


def rebuild(apps, schema_editor):
    from apps.messaging import search

    conn = schema_editor.connection
    if conn.vendor == "sqlite":
        search.drop_index(conn)
        search.create_index(conn)


class Migration(migrations.Migration):
    dependencies = [("messaging", "0007_search_index")]

    operations = [migrations.RunPython(rebuild, migrations.RunPython.noop)]
