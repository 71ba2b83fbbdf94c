"""Reports and site-wide moderation: one function per action, one transaction each.

A report's outcome goes through the same services a moderator uses anywhere else
(`message_delete`, `member_mute`, `member_ban`), in the same transaction as the report's
resolution, so the room's log, the live fan-out and the moderation log are the same as for an
action taken over the API or the WebSocket.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from apps.core.errors import forbidden, invalid
from apps.events import catalogue as ev
from apps.events.services import record_event
from apps.messaging import services as messaging
from apps.rooms import services as rooms
from apps.rooms.models import Membership, ModerationAction
from apps.users.services import is_site_moderator

from .models import Report

User = get_user_model()
REASON_MAX = 1000
RESOLUTION_REASON_MAX = 500


def moderator_ids(room) -> list[int]:
    """Who gets report.created: the room's owner and moderators, and every site moderator."""
    room_moderators = Membership.objects.filter(
        room=room, is_active=True, role__in=[Membership.Role.OWNER, Membership.Role.MODERATOR]
    ).values_list("user_id", flat=True)
    perm = Q(
        groups__permissions__codename="moderate_room",
        groups__permissions__content_type__app_label="rooms",
    ) | Q(
        user_permissions__codename="moderate_room",
        user_permissions__content_type__app_label="rooms",
    )
    site = User.objects.filter(is_active=True, is_staff=True).filter(Q(is_superuser=True) | perm)
    return sorted(set(room_moderators) | set(site.values_list("pk", flat=True)))


def report_create(*, message, reporter, category, reason="") -> tuple[Report, bool]:
    """Report a message the reporter may read: (the report, created). A second report of the
    same message by the same person while the first is open returns the first."""
    if category not in Report.Category.values:
        raise invalid("category must be one of: " + ", ".join(Report.Category.values))
    if not isinstance(reason, str):
        raise invalid("reason must be a string")
    if len(reason) > REASON_MAX:
        raise invalid(f"reason is longer than {REASON_MAX} characters")
    if any((ord(c) < 32 and c not in "\n\t") or ord(c) == 127 for c in reason):
        raise invalid("reason contains control characters")
    existing = Report.objects.open().filter(reporter=reporter, message=message).first()
    if existing is not None:
        return existing, False
    if message.author_id == reporter.pk:
        raise invalid("you cannot report your own message")
    if message.is_deleted:
        raise invalid("the message is deleted")
    try:
        with transaction.atomic():
            report = Report.objects.create(
                reporter=reporter,
                message=message,
                message_seq=message.seq,
                room_id=message.room_id,
                author_id=message.author_id,
                category=category,
                reason=reason,
                body=message.body,
            )
            # No seq (reports are not part of the room's history) and no actor: the reporter's
            # identity never leaves the database; moderators read it in the admin or the API.
            record_event(
                type="report.created",
                room=message.room,
                actor=None,
                data=ev.report_created(report),
                target_user_ids=moderator_ids(message.room),
            )
    except IntegrityError:  # the same report at the same moment from another request
        return Report.objects.open().get(reporter=reporter, message=message), False
    return report, True


def _clean_resolution_reason(reason) -> str:
    return (reason or "")[:RESOLUTION_REASON_MAX]


def report_resolve(*, report, actor, action, reason="", until=None) -> Report:
    """Handle an open report: `delete` the message, `mute` or `ban` its author in the room
    (optionally `until`), or `dismiss` it. The outcome goes through the usual service, so it
    is checked, logged, fanned out and recorded in the moderation log like any other."""
    if action not in ("delete", "mute", "ban", "dismiss"):
        raise invalid("action must be one of: delete, mute, ban, dismiss")
    reason = _clean_resolution_reason(reason)
    with transaction.atomic():
        report = (
            Report.objects.select_for_update(of=("self",))
            .select_related("room", "author", "message")
            .get(pk=report.pk)
        )
        if report.status != Report.Status.OPEN:
            raise invalid("the report is already handled")
        room = report.room
        if not rooms.can_moderate(room, actor):
            raise forbidden("only the room's moderators may handle its reports")
        if action == "delete":
            if report.message is None or report.message.is_deleted:
                raise invalid("the message is already deleted")
            messaging.message_delete(message=report.message, actor=actor, reason=reason)
        elif action in ("mute", "ban"):
            if report.author is None:
                raise invalid("the author's account no longer exists")
            if action == "mute":
                if until is None:
                    raise invalid("a mute needs an end (until)")
                rooms.member_mute(
                    room=room, actor=actor, user=report.author, until=until, reason=reason
                )
            else:
                rooms.member_ban(
                    room=room, actor=actor, user=report.author, until=until, reason=reason
                )
        else:
            ModerationAction.objects.create(
                room=room,
                actor=actor,
                target_user=report.author,
                target_message_id=report.message_id,
                action=ModerationAction.Action.DISMISS_REPORT,
                reason=reason,
                details={"report": report.pk},
            )
        report.status = Report.Status.DISMISSED if action == "dismiss" else Report.Status.RESOLVED
        report.action = action
        report.resolved_by = actor
        report.resolved_at = timezone.now()
        report.resolution_reason = reason
        report.save(
            update_fields=["status", "action", "resolved_by", "resolved_at", "resolution_reason"]
        )
        # Other open reports of the same message are settled by a deletion too.
        if action == "delete":
            Report.objects.open().filter(message_id=report.message_id).update(
                status=Report.Status.RESOLVED,
                action=action,
                resolved_by=actor,
                resolved_at=report.resolved_at,
                resolution_reason=reason,
            )
    return report


def report_bodies_erase(*, now=None) -> int:
    """Erase the copy of the body of reports handled more than REPORT_RETENTION_DAYS ago."""
    days = settings.REPORT_RETENTION_DAYS
    if days is None or days < 0:
        return 0
    now = now or timezone.now()
    return Report.objects.body_erasable(now - timedelta(days=days)).update(
        body="", body_erased_at=now
    )


def user_deactivate(*, user, actor, reason="") -> None:
    """Deactivate an account site-wide (site moderators): it can no longer log in, its tokens
    and sessions stop working and its sockets are closed; recorded in the moderation log."""
    if not is_site_moderator(actor):
        raise forbidden("only site moderators may deactivate accounts")
    if user.pk == actor.pk:
        raise forbidden("you cannot deactivate your own account")
    if (user.is_superuser or user.is_staff) and not actor.is_superuser:
        raise forbidden("only a superuser may deactivate a staff account")
    with transaction.atomic():
        user = User.objects.select_for_update(no_key=True).get(pk=user.pk)
        if not user.is_active:
            raise invalid("the account is already deactivated")
        user.is_active = False
        user.save(update_fields=["is_active"])
        ModerationAction.objects.create(
            room=None,
            actor=actor,
            target_user=user,
            action=ModerationAction.Action.DEACTIVATE,
            reason=_clean_resolution_reason(reason),
        )
