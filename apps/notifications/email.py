"""Email for notifications nobody read: once each, one email per user and run.

A notification is due when it is older than NOTIFY_EMAIL_AFTER_MINUTES, not marked read, not
emailed yet, and still past its owner's read position in the room at sending time (reading the
room, on any device, is what "read" means: presence when the mention was made does not count).
Users without an email address, inactive accounts and rooms the user has left are skipped.
Due rows are locked (SKIP LOCKED on PostgreSQL) while their email goes out, so two runs never
send the same notification; a failed send leaves them due for the next run.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.core.mail import EmailMessage, get_connection
from django.db import connection, transaction
from django.db.models import OuterRef, Subquery
from django.utils import timezone

from .models import Notification

logger = logging.getLogger(__name__)

PER_RUN = 2000  # notifications per run at most (the next run takes the rest)
LISTED = 50  # lines per email; the rest is counted


def due(now=None):
    """The due notifications (see the module docstring), oldest first."""
    from apps.rooms.models import Membership

    now = now or timezone.now()
    read_to = Membership.objects.filter(
        room=OuterRef("room_id"), user=OuterRef("user_id"), is_active=True
    ).values("last_read_seq")[:1]
    cutoff = now - timedelta(minutes=settings.NOTIFY_EMAIL_AFTER_MINUTES)
    return (
        Notification.objects.filter(
            read_at__isnull=True,
            emailed_at__isnull=True,
            created_at__lte=cutoff,
            user__is_active=True,
        )
        .exclude(user__email="")
        .annotate(read_to=Subquery(read_to))
        .filter(read_to__isnull=False)
        .order_by("created_at", "pk")
    )


def send_unread(now=None) -> int:
    """Email every user their due notifications (one email each); returns the emails sent."""
    now = now or timezone.now()
    sent = 0
    with transaction.atomic():
        rows = due(now)
        if connection.vendor == "postgresql":
            rows = rows.select_for_update(skip_locked=True, of=("self",))
        rows = list(rows.select_related("user", "room", "actor")[:PER_RUN])
        read = [n.pk for n in rows if n.seq is not None and n.seq <= n.read_to]
        if read:  # read in the room since: never emailed (and marked read, as a read does)
            Notification.objects.filter(pk__in=read).update(read_at=now)
        by_user: dict[int, list[Notification]] = {}
        for notification in rows:
            if notification.pk not in read:
                by_user.setdefault(notification.user_id, []).append(notification)
        if not by_user:
            return 0
        mail = get_connection(fail_silently=False)
        try:
            mail.open()
            for notifications in by_user.values():
                try:
                    mail.send_messages([message_for(notifications)])
                except Exception:  # noqa: BLE001 - this user's stay due for the next run
                    logger.warning(
                        "notification email to user %s failed",
                        notifications[0].user_id,
                        exc_info=True,
                    )
                    continue
                Notification.objects.filter(pk__in=[n.pk for n in notifications]).update(
                    emailed_at=now
                )
                sent += 1
        finally:
            mail.close()
    if sent:
        logger.info("notification emails: %d sent", sent)
    return sent


def message_for(notifications: list[Notification]) -> EmailMessage:
    user = notifications[0].user
    count = len(notifications)
    site = settings.NOTIFY_EMAIL_SITE_URL.rstrip("/")
    lines = [
        f"Hello {user.username},",
        "",
        f"you have {count} unread mention{'s' if count != 1 else ''}:",
        "",
    ]
    for n in notifications[:LISTED]:
        who = n.actor.username if n.actor else "someone"
        lines.append(f"- {n.room.name}: {who}: {n.excerpt}")
    if count > LISTED:
        lines.append(f"- and {count - LISTED} more")
    lines += [
        "",
        f"Read them at {site}/",
        "",
        (
            "You get this because the room's notification level is 'all' or 'mentions'; "
            "set it to 'none' in the room menu to stop them."
        ),
    ]
    return EmailMessage(
        subject=f"{count} unread mention{'s' if count != 1 else ''}",
        body="\n".join(lines),
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[user.email],
    )
