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
        """Events not yet acknowledged by Kafka: those with an Outbox row."""
        return self.filter(outbox__isnull=False)

    def published(self):
        """Events Kafka acknowledged (or, with no Kafka configured, none)."""
        return self.filter(outbox__isnull=True)

    def mark_published(self) -> int:
        """Take these events out of the outbox, as an acknowledgement does (retention and
        tests; the publisher deletes by id). Returns how many rows went."""
        outbox = self.model._meta.get_field("outbox").related_model
        return outbox.objects.filter(event__in=self.values("pk")).delete()[0]
