from django.db import models
from django.db.models import Exists, OuterRef, Q, Subquery
from django.utils import timezone

from apps.users.services import is_site_moderator


class RoomQuerySet(models.QuerySet):
    def visible_to(self, user):
        """The room-view rule: rooms the user may open (and sees listed). Every public room,
        the private and direct rooms they are an active member of, and for site moderators
        every room. `apps.rooms.services.room_visible` is the same rule for one room whose
        membership the caller holds already (the send path)."""
        if not user or not user.is_authenticated:
            return self.none()
        if is_site_moderator(user):
            return self.all()
        from .models import Membership  # models imports this module (model <-> own queryset)

        member = Membership.objects.filter(room=OuterRef("pk"), user=user, is_active=True)
        return self.filter(Q(kind="public") | Exists(member))

    def readable_by(self, user):
        """The read rule (`apps.rooms.services.check_can_read`) as a queryset: rooms the user
        may see, less those they are banned from (site moderators read every room)."""
        rooms = self.visible_to(user)
        if not user or not user.is_authenticated or is_site_moderator(user):
            return rooms
        from .models import Membership  # models imports this module (model <-> own queryset)

        banned = Membership.objects.banned().filter(room=OuterRef("pk"), user=user)
        return rooms.exclude(Exists(banned))

    def joined_by(self, user):
        """Rooms where the user is an active member."""
        return self.filter(memberships__user=user, memberships__is_active=True)

    def active(self):
        """Rooms that are not archived."""
        return self.filter(archived_at__isnull=True)

    def with_membership_of(self, user):
        """Annotate the user's role, last_read_seq and muted_until (`my_*`).

        `my_role` is None where the user is not an active member. The unread count, the
        mentions count and the notification level are messaging's and notifications' (joined
        in `apps.rooms.api.seen_by`).
        """
        from .models import Membership  # models imports this module (model <-> own queryset)

        mine = Membership.objects.filter(room=OuterRef("pk"), user=user, is_active=True)
        return self.annotate(
            my_role=Subquery(mine.values("role")[:1]),
            my_last_read_seq=Subquery(mine.values("last_read_seq")[:1]),
            my_muted_until=Subquery(mine.values("muted_until")[:1]),
        )


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
