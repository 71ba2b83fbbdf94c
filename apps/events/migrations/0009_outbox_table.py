"""The outbox moves out of the event log into its own narrow table (apps.events.models.Outbox).

The pending rows are copied over with their attempts and errors; the log loses its outbox
columns and partial indexes; the triggers that keep the two in step are installed last, so no
event is inserted in between without its row (a migration runs in one transaction on
PostgreSQL). Backwards: the columns come back, every event without an outbox row counts as
published (at the time of the reversal: the moment it was published is not kept).
"""

import django.db.models.deletion
from django.db import migrations, models
from django.utils import timezone


def copy_pending(apps, schema_editor):
    schema_editor.execute(
        "INSERT INTO events_outbox "
        "(event_id, room_id, seq, ts, publish_attempts, last_error, next_attempt_at) "
        "SELECT id, room_id, seq, ts, publish_attempts, last_error, next_attempt_at "
        "FROM events_event WHERE published_at IS NULL"
    )


def copy_back(apps, schema_editor):
    Event = apps.get_model("events", "Event")
    Outbox = apps.get_model("events", "Outbox")
    pending = Outbox.objects.values("pk")
    Event.objects.exclude(pk__in=pending).update(published_at=timezone.now())
    schema_editor.execute(
        "UPDATE events_event SET publish_attempts = o.publish_attempts, "
        "last_error = o.last_error, next_attempt_at = o.next_attempt_at "
        "FROM events_outbox o WHERE o.event_id = events_event.id"
    )


def install_triggers(apps, schema_editor):
    from apps.events import triggers

    triggers.install(schema_editor.connection)


def uninstall_triggers(apps, schema_editor):
    from apps.events import triggers

    triggers.uninstall(schema_editor.connection)


class Migration(migrations.Migration):
    dependencies = [
        ("events", "0008_backfill_message_subject"),
    ]

    operations = [
        migrations.CreateModel(
            name="Outbox",
            fields=[
                (
                    "event",
                    models.OneToOneField(
                        db_constraint=False,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        primary_key=True,
                        related_name="outbox",
                        serialize=False,
                        to="events.event",
                    ),
                ),
                ("room_id", models.BigIntegerField(blank=True, null=True)),
                ("seq", models.BigIntegerField(blank=True, null=True)),
                ("ts", models.DateTimeField()),
                ("publish_attempts", models.PositiveIntegerField(default=0)),
                ("last_error", models.TextField(blank=True, default="")),
                ("next_attempt_at", models.DateTimeField(blank=True, null=True)),
            ],
            options={
                "indexes": [
                    models.Index(fields=["room_id", "seq", "ts", "event"], name="outbox_order"),
                    models.Index(fields=["ts"], name="outbox_ts"),
                    models.Index(
                        condition=models.Q(("next_attempt_at__isnull", False)),
                        fields=["next_attempt_at"],
                        name="outbox_retry",
                    ),
                ],
            },
        ),
        migrations.RunPython(copy_pending, copy_back),
        migrations.RemoveIndex(model_name="event", name="event_outbox_pending"),
        migrations.RemoveIndex(model_name="event", name="event_outbox_order"),
        migrations.RemoveIndex(model_name="event", name="event_outbox_retry"),
        migrations.RemoveField(model_name="event", name="last_error"),
        migrations.RemoveField(model_name="event", name="next_attempt_at"),
        migrations.RemoveField(model_name="event", name="publish_attempts"),
        migrations.RemoveField(model_name="event", name="published_at"),
        migrations.RunPython(install_triggers, uninstall_triggers),
    ]
