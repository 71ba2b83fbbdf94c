from django.db import models
from django.db.models import Exists, OuterRef, Q, Subquery
from django.utils import timezone

from apps.users.services import is_site_moderator


def readable_condition(user, room: str = "pk") -> Q:
    """The read rule (`RoomQuerySet.readable_by`) as a condition on the room a query reaches
    by `room` ("pk" on rooms, "room" on messages): public rooms and the user's own (active
    memberships), less those they are banned from; site moderators read every room. The
    user's memberships and bans are uncorrelated subqueries, so the database reads them once
    a query (hashed), not once a row: a search checks thousands of matches against them."""
    if not user or not user.is_authenticated:
        return Q(pk__in=[])
    if is_site_moderator(user):
        return Q()
    from .models import Membership  # models imports this module (model <-> own queryset)

    mine = Membership.objects.filter(user=user, is_active=True).values("room_id")
    banned = Membership.objects.banned().filter(user=user).values("room_id")
    kind = "kind" if room == "pk" else f"{room}__kind"
    return (Q(**{kind: "public"}) | Q(**{f"{room}__in": mine})) & ~Q(**{f"{room}__in": banned})


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
        return self.filter(readable_condition(user))

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
