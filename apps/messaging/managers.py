from django.db import models


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

    def visible_to(self, user):
        """Messages the user may read: in rooms they may see and are not banned from."""
        from apps.rooms.models import Room

        return self.filter(room__in=Room.objects.readable_by(user))


class ReactionQuerySet(models.QuerySet):
    def on_message(self, message):
        """Reactions on one message."""
        return self.filter(message=message)
