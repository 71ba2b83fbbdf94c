"""The "Moderators" group: staff who moderate every room through the admin and the API.

Just what moderation needs: `rooms.moderate_room` (the services' site-moderator check and the
admin actions) and read access to rooms, memberships, messages and the moderation log. No
change, add or delete permissions: every change goes through the services' admin actions.
Members of the group must also be staff (is_staff) to reach the admin; they are not superusers.
"""

from django.contrib.auth.management import create_permissions
from django.db import migrations

GROUP = "Moderators"
PERMISSIONS = [
    ("rooms", "moderate_room"),
    ("rooms", "view_room"),
    ("rooms", "view_membership"),
    ("rooms", "view_moderationaction"),
    ("messaging", "view_message"),
]


def grant(apps, permissions, using="default"):
    """Create (or complete) the group with `permissions` [(app label, codename)].

    Permissions are normally created after migrate; they are created here first so the group
    can hold them (later migrations that give the group more call this too)."""
    for label in sorted({app for app, _ in permissions}):
        app_config = apps.get_app_config(label)
        stub = getattr(app_config, "models_module", None) is None  # historical app registry
        if stub:
            app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0, using=using)
        if stub:
            app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _ = Group.objects.using(using).get_or_create(name=GROUP)
    for app_label, codename in permissions:
        group.permissions.add(
            Permission.objects.using(using).get(content_type__app_label=app_label, codename=codename)
        )
    return group


def ensure_group(apps, using="default"):
    """Create (or complete) the group; also used by the tests after a database flush."""
    return grant(apps, PERMISSIONS, using)


def create_group(apps, schema_editor):
    ensure_group(apps, schema_editor.connection.alias)


def remove_group(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name=GROUP).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("rooms", "0002_initial"),
        ("messaging", "0002_initial"),
    ]

    operations = [migrations.RunPython(create_group, remove_group)]
