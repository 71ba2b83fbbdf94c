from django.db import models


class EventQuerySet(models.QuerySet):
    def in_room(self, room):
        """Events of one room's log."""
        return self.filter(room=room)

    def since(self, seq):
        """Room-log events after the given seq, oldest first."""
        return self.filter(seq__gt=seq or 0).order_by("seq")

    def sequenced(self):
        """Events that belong to a room's seq'd log (not receipts)."""
        return self.filter(seq__isnull=False)

    def unpublished(self):
        """The outbox: events not yet acknowledged by Kafka."""
        return self.filter(published_at__isnull=True)
