import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from .catalogue import DURABLE_TYPES
from .managers import EventQuerySet


class Event(models.Model):
    """One persisted event of the room's event log.

    Written in the same transaction as the change it records. `envelope` is the exact dict
    that goes out on the WebSocket and to Kafka. A database trigger gives every new row its
    Outbox row in the same statement (migration 0009), so no write path can leave one out.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    type = models.CharField(max_length=32, choices=[(t, t) for t in DURABLE_TYPES])
    room = models.ForeignKey(
        "rooms.Room", null=True, blank=True, on_delete=models.CASCADE, related_name="events"
    )
    seq = models.BigIntegerField(null=True, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    ts = models.DateTimeField(default=timezone.now)
    envelope = models.JSONField()
    # The message the event is about (catalogue.message_id_of), so a deletion finds the rows
    # to redact through an index, not by reading the log. No foreign key: the log outlives
    # messages, and an insert pays for no constraint check.
    message_id = models.BigIntegerField(null=True, blank=True, editable=False)
    # The user named in data.user (member and receipt events), so an erasure finds the rows
    # that spell the username without reading the log (catalogue.subject_of).
    subject_id = models.BigIntegerField(null=True, blank=True, editable=False)
    objects = EventQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["room", "seq"], name="event_room_seq_unique", condition=Q(seq__isnull=False)
            )
        ]
        indexes = [
            models.Index(fields=["type", "ts"]),
            models.Index(fields=["message_id"], name="event_message"),
            # Partial: the send path's rows (no data.user) add nothing to it.
            models.Index(
                fields=["subject_id"], name="event_subject", condition=Q(subject_id__isnull=False)
            ),
        ]
        ordering = ["ts"]

    def __str__(self):
        return f"{self.type} room={self.room_id} seq={self.seq}"


class Outbox(models.Model):
    """An event Kafka has not acknowledged yet: the publisher's queue (apps.events.publisher).

    Its own narrow table, not columns of Event: publishing deletes this row, where marking the
    event row rewrote it whole (the log's widest table, with every index, as no HOT update can
    change a column a partial index names): 1.1 kB of WAL per event and a dead tuple in the
    log. The triggers of migration 0009 insert a row for every inserted event, in the same
    statement, and delete it with the event. No foreign-key constraint: its check would lock
    the new event row again on every insert (the triggers keep the two in step).
    """

    event = models.OneToOneField(
        Event,
        primary_key=True,
        on_delete=models.DO_NOTHING,  # the delete trigger removes the row with its event
        db_constraint=False,
        related_name="outbox",
    )
    # Copied from the event, so the publisher reads its batch in order from this table's index.
    room_id = models.BigIntegerField(null=True, blank=True)
    seq = models.BigIntegerField(null=True, blank=True)
    ts = models.DateTimeField()
    publish_attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    next_attempt_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            # The publisher reads the outbox in this order (apps.events.publisher.next_batch).
            models.Index(fields=["room_id", "seq", "ts", "event"], name="outbox_order"),
            models.Index(fields=["ts"], name="outbox_ts"),  # the oldest pending (outbox_status)
            models.Index(
                fields=["next_attempt_at"],
                name="outbox_retry",
                condition=Q(next_attempt_at__isnull=False),
            ),
        ]

    def __str__(self):
        return f"pending {self.event_id} room={self.room_id} seq={self.seq}"


class ConsumedEvent(models.Model):
    """An event a Kafka consumer group has handled: consumers deduplicate on (group, event id).

    Written in the same transaction as the handler's own writes, so a redelivered event (a
    rebalance, a crash before the offset commit, a republished outbox row) is skipped.
    """

    group = models.CharField(max_length=100)
    event_id = models.UUIDField()
    handled_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["group", "event_id"], name="consumed_event_unique")
        ]
        indexes = [models.Index(fields=["handled_at"])]

    def __str__(self):
        return f"{self.group}: {self.event_id}"
