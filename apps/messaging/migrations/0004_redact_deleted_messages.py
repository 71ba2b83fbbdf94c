"""Redact the messages deleted before deletion meant redaction (PROTOCOL §6): their rows'
bodies are cleared and every stored event that carried their content (message.created, each
message.edited) gets body null, attachments [] and redacted true, in batches (each its own
transaction). A message with an empty body and a deleted_at is done, so it can run again."""

from django.db import migrations, transaction

BATCH = 1000
CONTENT_TYPES = ("message.created", "message.edited")


def redact_deleted(apps, schema_editor):
    Message = apps.get_model("messaging", "Message")
    Event = apps.get_model("events", "Event")
    connection = schema_editor.connection
    table = connection.ops.quote_name(Event._meta.db_table)
    last = 0
    while True:
        ids = list(
            Message.objects.filter(deleted_at__isnull=False, pk__gt=last)
            .exclude(body="").order_by("pk").values_list("pk", flat=True)[:BATCH]
        )
        if not ids:
            return
        with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
            Message.objects.filter(pk__in=ids).update(body="")
            if connection.vendor == "postgresql":
                cursor.execute(
                    f"UPDATE {table} SET envelope = jsonb_set(envelope, '{{data}}', "
                    "(envelope -> 'data') || "
                    "'{\"body\": null, \"attachments\": [], \"redacted\": true}'::jsonb) "
                    "WHERE message_id = ANY(%s) AND type = ANY(%s)",
                    [ids, list(CONTENT_TYPES)],
                )
            else:
                marks = ", ".join(["%s"] * len(ids))
                cursor.execute(
                    f"UPDATE {table} SET envelope = json_set(envelope, '$.data.body', "
                    "json('null'), '$.data.attachments', json('[]'), '$.data.redacted', "
                    f"json('true')) WHERE message_id IN ({marks}) AND type IN (%s, %s)",
                    [*ids, *CONTENT_TYPES],
                )
        last = ids[-1]


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("messaging", "0003_author_reaction_user_protect"),
        ("events", "0008_backfill_message_subject"),
    ]

    operations = [migrations.RunPython(redact_deleted, migrations.RunPython.noop, elidable=True)]
