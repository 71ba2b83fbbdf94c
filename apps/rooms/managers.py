from django.db import models
from django.db.models import Q
from django.utils import timezone


class RoomQuerySet(models.QuerySet):
    def visible_to(self, user):
        """Rooms the user may see: every public room, and private/direct rooms they belong to."""
        if not user or not user.is_authenticated:
            return self.none()
        return self.filter(
            Q(kind="public") | Q(memberships__user=user, memberships__is_active=True)
        ).distinct()

    def joined_by(self, user):
        """Rooms where the user is an active member."""
        return self.filter(memberships__user=user, memberships__is_active=True)

    def active(self):
        """Rooms that are not archived."""
        return self.filter(archived_at__isnull=True)


class MembershipQuerySet(models.QuerySet):
    def active(self):
        """Current members (not left, not banned)."""
        return self.filter(is_active=True)

    def in_room(self, room):
        """Memberships of one room."""
        return self.filter(room=room)

    def for_user(self, user):
        """Memberships of one user."""
        return self.filter(user=user)

    def banned(self):
        """Memberships under a ban that has not ended."""
        now = timezone.now()
        return self.filter(banned_at__isnull=False).filter(
            Q(banned_until__isnull=True) | Q(banned_until__gt=now)
        )
