"""Fill Event.message_id and Event.subject_id on the rows written before they existed, in
batches (each its own transaction), so the redaction and erasure find them by index."""

from django.db import migrations, transaction

BATCH = 5000
MESSAGE_KEYS = {"message.created": "id", "message.edited": "id", "message.deleted": "id",
                "reaction.added": "message", "reaction.removed": "message"}


def _ids(data):
    return data if isinstance(data, dict) else {}


def backfill(apps, schema_editor):
    Event = apps.get_model("events", "Event")
    connection = schema_editor.connection
    if connection.vendor == "postgresql":
        _backfill_postgresql(connection, Event._meta.db_table)
        return
    last = None
    while True:
        rows = Event.objects.order_by("pk")
        if last is not None:
            rows = rows.filter(pk__gt=last)
        batch = list(rows.only("pk", "type", "envelope")[:BATCH])
        if not batch:
            return
        for event in batch:
            data = _ids((event.envelope or {}).get("data"))
            key = MESSAGE_KEYS.get(event.type)
            event.message_id = data.get(key) if key else None
            user = data.get("user")
            event.subject_id = user.get("id") if isinstance(user, dict) else None
        with transaction.atomic(using=connection.alias):
            Event.objects.bulk_update(batch, ["message_id", "subject_id"], batch_size=500)
        last = batch[-1].pk


def _backfill_postgresql(connection, table):
    cases = " ".join(f"WHEN '{t}' THEN (e.envelope #>> '{{data,{k}}}')::bigint"
                     for t, k in MESSAGE_KEYS.items())
    last = "00000000-0000-0000-0000-000000000000"
    while True:
        with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
            cursor.execute(
                f"WITH batch AS (SELECT id FROM {table} WHERE id > %s ORDER BY id LIMIT %s) "
                f"UPDATE {table} e SET message_id = CASE e.type {cases} END, "
                "subject_id = CASE WHEN jsonb_typeof(e.envelope #> '{data,user}') = 'object' "
                "THEN (e.envelope #>> '{data,user,id}')::bigint END "
                "FROM batch WHERE e.id = batch.id RETURNING e.id::text",
                [last, BATCH],
            )
            ids = [row[0] for row in cursor.fetchall()]
        if not ids:
            return
        last = max(ids)


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("events", "0007_event_message_subject_actor_protect")]

    operations = [migrations.RunPython(backfill, migrations.RunPython.noop, elidable=True)]
