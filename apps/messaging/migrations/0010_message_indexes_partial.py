"""Fewer index entries per message (every send inserts into each index of the table).

- room and author lose their own indexes: the unique (room, seq) and (author, client_id)
  lead with them and serve every lookup and foreign-key check by them;
- reply_to, thread (with seq) and deleted_by are NULL on most rows: their indexes become
  partial (WHERE ... IS NOT NULL), which still serve `= x` and `IN (...)`.

Nine index entries per message become five, and a message's WAL 1,316 -> 970 bytes
(bench/RESULTS.md, 4 December). Django's AlterField would drop and re-add each foreign key,
which scans the whole table under a lock; here the fields change in the migration state
only, and on PostgreSQL the indexes are built and dropped CONCURRENTLY (so the migration is
not atomic): sends go on while it runs. The new indexes are built before the old ones go.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

TABLE = "messaging_message"
NEW = [
    models.Index(
        condition=models.Q(("thread__isnull", False)),
        fields=["thread", "seq"],
        name="message_thread_seq",
    ),
    models.Index(
        condition=models.Q(("reply_to__isnull", False)),
        fields=["reply_to"],
        name="message_reply_to",
    ),
    models.Index(
        condition=models.Q(("deleted_by__isnull", False)),
        fields=["deleted_by"],
        name="message_deleted_by",
    ),
]
NEW_NAMES = {index.name for index in NEW}
# The single-column indexes Django made for these foreign keys (db_index=True).
OLD_COLUMNS = ["room_id", "author_id", "reply_to_id", "deleted_by_id"]


def _single_column_indexes(connection, column) -> list[str]:
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, TABLE)
    return [
        name
        for name, c in constraints.items()
        if c["columns"] == [column]
        and name not in NEW_NAMES  # the partial ones, just made
        and c["index"]
        and not c["unique"]
        and not c["primary_key"]
        and not c.get("foreign_key")
    ]


def _drop(schema_editor, name):
    concurrently = "CONCURRENTLY " if schema_editor.connection.vendor == "postgresql" else ""
    schema_editor.execute(f"DROP INDEX {concurrently}IF EXISTS {schema_editor.quote_name(name)}")


def _valid(connection, name) -> bool | None:
    """Whether an index of that name exists and is usable (None: there is none). An
    interrupted CREATE INDEX CONCURRENTLY leaves an invalid one behind."""
    with connection.cursor() as cursor:
        if connection.vendor != "postgresql":
            constraints = connection.introspection.get_constraints(cursor, TABLE)
            return True if name in constraints else None
        cursor.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", [name])
        row = cursor.fetchone()
        return None if row is None else row[0]


def _add(schema_editor, model, index):
    """Build the index unless a usable one is there already (so the migration can be run
    again after an interruption)."""
    valid = _valid(schema_editor.connection, index.name)
    if valid:
        return
    if valid is False:
        _drop(schema_editor, index.name)
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.add_index(model, index, concurrently=True)
    else:
        schema_editor.add_index(model, index)


def forwards(apps, schema_editor):
    model = apps.get_model("messaging", "Message")
    _drop(schema_editor, "message_thread_seq")  # the full (thread, seq) index, same name
    for index in NEW:
        _add(schema_editor, model, index)
    for column in OLD_COLUMNS:
        for name in _single_column_indexes(schema_editor.connection, column):
            _drop(schema_editor, name)


def backwards(apps, schema_editor):
    model = apps.get_model("messaging", "Message")
    for column in OLD_COLUMNS:
        field = model._meta.get_field(column.removesuffix("_id"))
        schema_editor.execute(schema_editor._create_index_sql(model, fields=[field]))
    for index in NEW:
        _drop(schema_editor, index.name)
    schema_editor.add_index(
        model, models.Index(fields=["thread", "seq"], name="message_thread_seq")
    )


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("messaging", "0009_search_index_pending_list"),
        ("rooms", "0007_membership_user_protect"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunPython(forwards, backwards)],
            state_operations=[
                migrations.RemoveIndex(
                    model_name="message",
                    name="message_thread_seq",
                ),
                migrations.AlterField(
                    model_name="message",
                    name="author",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="messages",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                migrations.AlterField(
                    model_name="message",
                    name="deleted_by",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                migrations.AlterField(
                    model_name="message",
                    name="reply_to",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="replies",
                        to="messaging.message",
                    ),
                ),
                migrations.AlterField(
                    model_name="message",
                    name="room",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="messages",
                        to="rooms.room",
                    ),
                ),
                *[migrations.AddIndex(model_name="message", index=index) for index in NEW],
            ],
        )
    ]
