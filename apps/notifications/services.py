"""Writes to notifications (the handler creates them; users mark them read)."""

from __future__ import annotations

from django.utils import timezone

from apps.core.errors import forbidden, invalid, not_found

from .models import Notification

MAX_IDS = 500


def on_room_read(sender, room, user, seq, **kwargs) -> None:
    """Reading a room reads its notifications up to that seq (apps.rooms.signals.room_read,
    in mark_read's transaction)."""
    Notification.objects.filter(user=user, room=room, read_at__isnull=True, seq__lte=seq).update(
        read_at=timezone.now()
    )


def notification_mark_read(*, user, notification_id) -> Notification:
    """Mark one of the user's notifications read (idempotent)."""
    try:
        notification = Notification.objects.for_user(user).get(pk=int(notification_id))
    except (Notification.DoesNotExist, TypeError, ValueError, OverflowError):
        raise not_found("notification not found") from None
    if notification.read_at is None:
        notification.read_at = timezone.now()
        notification.save(update_fields=["read_at"])
    return notification


def notifications_mark_read(*, user, ids=None, all=False) -> int:
    """Mark several (ids) or all of the user's unread notifications read; returns how many."""
    if all:
        return Notification.objects.for_user(user).unread().update(read_at=timezone.now())
    if not isinstance(ids, list) or not ids:
        raise invalid("give ids (a non-empty list of notification ids) or all=true")
    if len(ids) > MAX_IDS:
        raise invalid(f"at most {MAX_IDS} ids at once")
    if any(isinstance(i, bool) or not isinstance(i, int) or not 0 < i < 2**63 for i in ids):
        raise invalid("ids must be notification ids (positive integers)")
    return (
        Notification.objects.for_user(user)
        .unread()
        .filter(pk__in=ids)
        .update(read_at=timezone.now())
    )


def room_level_set(*, room, user, level) -> str:
    """Set the user's notification level in a room they are an active member of."""
    from apps.rooms.models import Membership

    from .models import RoomLevel

    if not isinstance(level, str) or level not in RoomLevel.Level.values:
        raise invalid("notify must be one of: " + ", ".join(RoomLevel.Level.values))
    if not Membership.objects.active().filter(room=room, user=user).exists():
        raise forbidden("join the room first")
    RoomLevel.objects.update_or_create(room=room, user=user, defaults={"level": level})
    return level
