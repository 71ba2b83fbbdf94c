from django.db import models
from django.db.models import Count, IntegerField, OuterRef, Subquery, Value
from django.db.models.functions import Coalesce


class MessageQuerySet(models.QuerySet):
    def in_room(self, room):
        """Messages of one room."""
        return self.filter(room=room)

    def visible(self):
        """Messages that are not deleted."""
        return self.filter(deleted_at__isnull=True)

    def before(self, seq):
        """Messages created before the given seq (for scroll-back)."""
        return self.filter(seq__lt=seq) if seq is not None else self

    def newest_first(self):
        return self.order_by("-seq")

    def unread_count(self, user):
        """The unread count of an outer room row annotated by
        `Room.objects.with_membership_of(user)`, as an expression: the room's live messages
        past the user's read position, not their own (0 when there are none, or the user is
        not a member)."""
        unread = (
            self.filter(
                room=OuterRef("pk"), seq__gt=OuterRef("my_last_read_seq"), deleted_at__isnull=True
            )
            .exclude(author=user)
            .order_by()
            .values("room")
            .annotate(n=Count("pk"))
            .values("n")
        )
        return Coalesce(Subquery(unread, output_field=IntegerField()), Value(0))


class ReactionQuerySet(models.QuerySet):
    def on_message(self, message):
        """Reactions on one message."""
        return self.filter(message=message)
