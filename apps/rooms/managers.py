from django.db import models
from django.db.models import Exists, OuterRef, Q, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone


MODERATE_PERMISSION = "rooms.moderate_room"


def is_site_moderator(user) -> bool:
    """Staff moderators (the Moderators group, superusers) may moderate every room."""
    return bool(user and user.is_active and user.is_staff and user.has_perm(MODERATE_PERMISSION))


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
        from .models import Membership

        member = Membership.objects.filter(room=OuterRef("pk"), user=user, is_active=True)
        return self.filter(Q(kind="public") | Exists(member))

    def readable_by(self, user):
        """The read rule (`apps.rooms.services.check_can_read`) as a queryset: rooms the user
        may see, less those they are banned from (site moderators read every room)."""
        rooms = self.visible_to(user)
        if not user or not user.is_authenticated or is_site_moderator(user):
            return rooms
        from .models import Membership

        banned = Membership.objects.banned().filter(room=OuterRef("pk"), user=user)
        return rooms.exclude(Exists(banned))

    def joined_by(self, user):
        """Rooms where the user is an active member."""
        return self.filter(memberships__user=user, memberships__is_active=True)

    def active(self):
        """Rooms that are not archived."""
        return self.filter(archived_at__isnull=True)

    def with_membership_of(self, user):
        """Annotate the user's role, last_read_seq, muted_until, notification level
        (`my_notify`, None: the default), unread message count and `mentions`.

        `my_role` is None where the user is not an active member (and `unread` is then 0).
        Unread counts the room's live messages past the read position, not the user's own;
        `mentions` the user's unread notifications of the room past it (apps.notifications).
        """
        from apps.messaging.models import Message
        from apps.notifications.models import Notification, RoomLevel

        from .models import Membership

        mine = Membership.objects.filter(room=OuterRef("pk"), user=user, is_active=True)
        unread = (
            Message.objects.filter(
                room=OuterRef("pk"), seq__gt=OuterRef("my_last_read_seq"), deleted_at__isnull=True
            )
            .exclude(author=user)
            .order_by()
            .values("room")
            .annotate(n=models.Count("pk"))
            .values("n")
        )
        mentions = (
            Notification.objects.filter(
                user=user, room=OuterRef("pk"), read_at__isnull=True,
                seq__gt=OuterRef("my_last_read_seq"),
            )
            .order_by()
            .values("room")
            .annotate(n=models.Count("pk"))
            .values("n")
        )
        level = RoomLevel.objects.filter(room=OuterRef("pk"), user=user).values("level")[:1]
        return self.annotate(
            my_role=Subquery(mine.values("role")[:1]),
            my_last_read_seq=Subquery(mine.values("last_read_seq")[:1]),
            my_muted_until=Subquery(mine.values("muted_until")[:1]),
            my_notify=Subquery(level),
        ).annotate(
            unread=Coalesce(Subquery(unread, output_field=models.IntegerField()), Value(0)),
            mentions=Coalesce(Subquery(mentions, output_field=models.IntegerField()), Value(0)),
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
