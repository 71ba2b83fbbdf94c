"""Add users.username_key (NFKC, case-folded username) and fill it.

Usernames that already collide on that key (`ada` and a later `Ａｄａ`/`Ada`, made possible by
the old check) are resolved deterministically so the unique index of 0003 can be built: the
account that joined first keeps its name, each later one is renamed `<name>-<id>` (the id keeps
it unique and tells the operator which account it was). Each rename is printed. Nothing else
changes: the renamed account keeps its id, password, tokens, rooms and messages, and can log
in with the new name (an operator may rename it again in the admin). Refusing to migrate
instead would hold back the fix until someone settles every pair by hand, while the later
account of a pair is the one the old bug let through (often a lookalike).
"""

import sys
import unicodedata

from django.db import migrations, models


def _key(username: str) -> str:
    # A copy of apps.users.models.username_key as of this migration (migrations do not import
    # code that may change).
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", username).casefold())


def fill_keys(apps, schema_editor):
    User = apps.get_model("users", "User")
    db = schema_editor.connection.alias
    users = list(User.objects.using(db).order_by("date_joined", "pk").only("pk", "username"))
    taken = {_key(user.username) for user in users}
    seen = set()
    for user in users:
        key = _key(user.username)
        if key in seen:
            old, suffix, n = user.username, f"-{user.pk}", 1
            candidate = old[:150 - len(suffix)] + suffix
            while _key(candidate) in taken:
                n += 1
                suffix = f"-{user.pk}-{n}"
                candidate = old[:150 - len(suffix)] + suffix
            user.username, key = candidate, _key(candidate)
            taken.add(key)
            sys.stdout.write(f"\n  users: renamed user {user.pk} {old!r} -> {candidate!r} "
                             f"(its name differs only in case or width from an older account)")
        seen.add(key)
        User.objects.using(db).filter(pk=user.pk).update(username=user.username, username_key=key)


class Migration(migrations.Migration):

    dependencies = [
        ("users", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="user",
            name="username_key",
            field=models.CharField(editable=False, max_length=450, null=True),
        ),
        migrations.RunPython(fill_keys, migrations.RunPython.noop, elidable=False),
    ]
