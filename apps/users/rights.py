"""A user's rights as open sockets see them: one version number per user, bumped on every change.

Sockets keep their user object between frames; what they may read or do depends on
`is_active`, `is_staff`, `is_superuser`, the groups (Moderators), the user's and the groups'
permissions, and the password. Every change to one of them, once committed, increments the
user's counter in Redis (`<prefix>:rights:<user id>`; an in-process counter without REDIS_URL)
and tells every server process through the user's channel-layer group (apps.users.sessions):

- password changed: the user's sockets close with 4401 (their API tokens are rotated in the
  same transaction, so the old token stops working on REST and WebSocket);
- deactivated: close with 4403, or with the code the saving service put on the instance
  (`user._close_code = 4401` before `user.save()`, as account erasure does);
- anything else (staff, superuser, groups, permissions): each process reloads the user and
  ends the subscriptions the user may no longer see (`unsubscribed`, reason `forbidden`);
  the consumer reloads its user before the next frame that reads or acts.

A process that missed the message notices the new version within CHAT_RIGHTS_CHECK_SECONDS
(it compares the counters of its users with Redis).
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.db.models.signals import m2m_changed, post_save, pre_save

from apps.core.redis import async_client, sync_client

from . import sessions

logger = logging.getLogger(__name__)

WATCHED = ("is_active", "is_staff", "is_superuser", "password")
CLOSE_PASSWORD_CHANGED = sessions.CLOSE_UNAUTHENTICATED
CLOSE_DEACTIVATED = sessions.CLOSE_FORBIDDEN

_local_versions: dict[int, int] = {}  # embedded mode (one process, the in-memory layer)


def version_key(user_id: int) -> str:
    return f"{settings.CHANNELS_PREFIX}:rights:{user_id}"


def _incr(user_id: int) -> int | None:
    if not settings.REDIS_URL:
        _local_versions[user_id] = _local_versions.get(user_id, 0) + 1
        return _local_versions[user_id]
    try:
        return int(sync_client().incr(version_key(user_id)))
    except Exception:
        logger.warning("rights version of user %s not bumped (Redis)", user_id, exc_info=True)
        return None


async def versions(user_ids) -> dict[int, int]:
    """The current version of each user (0 if never bumped)."""
    user_ids = list(user_ids)
    if not user_ids:
        return {}
    if not settings.REDIS_URL:
        return {u: _local_versions.get(u, 0) for u in user_ids}
    values = await async_client().mget([version_key(u) for u in user_ids])
    return {u: int(v or 0) for u, v in zip(user_ids, values, strict=True)}


def changed(user_ids, *, code: int | None = None, reason: str = "") -> None:
    """After the current transaction commits: bump the users' versions and tell every process
    (close their sockets with `code`, or re-check their subscriptions)."""
    user_ids = sorted(set(user_ids))
    if not user_ids:
        return

    def notify():
        for user_id in user_ids:
            version = _incr(user_id)
            fields = {"version": version if version is not None else 0}
            if code:
                fields.update(code=code, reason=reason)
            sessions.notify_user(user_id, **fields)

    transaction.on_commit(notify)


# --- What counts as a change ------------------------------------------------------------------

User = get_user_model()


def _before(sender, instance, raw=False, update_fields=None, **kwargs):
    if raw or instance._state.adding or instance.pk is None:
        return
    if update_fields is not None and not set(update_fields) & set(WATCHED):
        return  # e.g. the login's last_login update
    instance._rights_before = User.objects.filter(pk=instance.pk).values(*WATCHED).first()


def _after(sender, instance, created=False, raw=False, **kwargs):
    before = instance.__dict__.pop("_rights_before", None)
    if raw or created or before is None:
        return
    diff = {f for f in WATCHED if before[f] != getattr(instance, f)}
    if not diff:
        return
    explicit = getattr(instance, "_close_code", None)
    if "is_active" in diff and not instance.is_active:
        changed(
            [instance.pk], code=explicit or CLOSE_DEACTIVATED, reason="the account was deactivated"
        )
    elif "password" in diff:
        rotate_tokens(instance)
        changed(
            [instance.pk],
            code=explicit or CLOSE_PASSWORD_CHANGED,
            reason="the password changed; log in again",
        )
    else:
        changed([instance.pk])


def rotate_tokens(user) -> None:
    """Replace the user's API token with a new one (the old key stops working at once)."""
    from rest_framework.authtoken.models import Token

    if Token.objects.filter(user=user).delete()[0]:
        Token.objects.create(user=user)


def _members(group_ids) -> list[int]:
    return list(User.objects.filter(groups__in=list(group_ids)).values_list("pk", flat=True))


def _user_m2m(sender, instance, action, reverse, pk_set, **kwargs):
    """User.groups / User.user_permissions, from either side."""
    if action == "pre_clear" and reverse:  # group.user_set.clear(): who is in it, before
        instance._rights_clear = list(instance.user_set.values_list("pk", flat=True))
        return
    if action not in ("post_add", "post_remove", "post_clear"):
        return
    if not reverse:
        changed([instance.pk])
    elif action == "post_clear":
        changed(instance.__dict__.pop("_rights_clear", []))
    else:
        changed(pk_set or ())


def _group_permissions(sender, instance, action, reverse, pk_set, **kwargs):
    """Group.permissions: every member of the changed group(s)."""
    if action == "pre_clear" and reverse:  # permission.group_set.clear()
        instance._rights_clear = _members(instance.group_set.values_list("pk", flat=True))
        return
    if action not in ("post_add", "post_remove", "post_clear"):
        return
    if not reverse:
        changed(_members([instance.pk]))
    elif action == "post_clear":
        changed(instance.__dict__.pop("_rights_clear", []))
    else:
        changed(_members(pk_set or ()))


def connect() -> None:
    pre_save.connect(_before, sender=User, dispatch_uid="chat-rights-before")
    post_save.connect(_after, sender=User, dispatch_uid="chat-rights-after")
    for through in (User.groups.through, User.user_permissions.through):
        m2m_changed.connect(_user_m2m, sender=through, dispatch_uid=f"chat-rights-{through}")
    m2m_changed.connect(
        _group_permissions,
        sender=Group.permissions.through,
        dispatch_uid="chat-rights-group-permissions",
    )
