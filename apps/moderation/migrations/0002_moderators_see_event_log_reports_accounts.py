"""The Moderators group also reads the event log, the reports and the accounts.

The README has moderators watch the event log; without `events.view_event` they got a 403 on
it. Reports (`moderation.view_report`) and accounts (`moderation.view_account`, the read-only
list they deactivate accounts from) are new. Still no add, change or delete permission: every
change goes through a service, from an admin action or the report page.
"""

from importlib import import_module

from django.db import migrations

PERMISSIONS = [
    ("events", "view_event"),
    ("moderation", "view_report"),
    ("moderation", "view_account"),
]


def ensure_group(apps, using="default"):
    """The group with every moderator permission (also used by the tests after a flush)."""
    base = import_module("apps.rooms.migrations.0003_moderators_group")
    return base.grant(apps, base.PERMISSIONS + PERMISSIONS, using)


def add_permissions(apps, schema_editor):
    ensure_group(apps, schema_editor.connection.alias)


def remove_permissions(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    group = Group.objects.filter(name="Moderators").first()
    if group is not None:
        group.permissions.remove(*group.permissions.filter(
            content_type__app_label__in=[a for a, _ in PERMISSIONS],
            codename__in=[c for _, c in PERMISSIONS],
        ))


class Migration(migrations.Migration):
    dependencies = [
        ("moderation", "0001_reports"),
        ("rooms", "0005_moderation_log_site_wide_actions"),
        ("events", "0006_report_created_type"),
    ]

    operations = [migrations.RunPython(add_permissions, remove_permissions)]
