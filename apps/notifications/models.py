from django.conf import settings
from django.db import models
from django.db.models import Count, IntegerField, OuterRef, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone


class NotificationQuerySet(models.QuerySet):
    def for_user(self, user):
        """The user's own notifications."""
        return self.filter(user=user)

    def unread(self):
        """Not yet marked read."""
        return self.filter(read_at__isnull=True)

    def before(self, notification_id):
        """Older than the given id (the list's cursor)."""
        return self.filter(pk__lt=notification_id) if notification_id else self

    def newest_first(self):
        return self.order_by("-pk")

    def unread_mentions_count(self, user):
        """The `mentions` count of an outer room row annotated by
        `Room.objects.with_membership_of(user)`, as an expression: the user's unread
        notifications of the room past their read position (0 when there are none)."""
        mentions = (
            self.filter(
                user=user,
                room=OuterRef("pk"),
                read_at__isnull=True,
                seq__gt=OuterRef("my_last_read_seq"),
            )
            .order_by()
            .values("room")
            .annotate(n=Count("pk"))
            .values("n")
        )
        return Coalesce(Subquery(mentions, output_field=IntegerField()), Value(0))


class Notification(models.Model):
    """A mention of a user in a room (apps.notifications.mentions makes them from the log)."""

    class Kind(models.TextChoices):
        MENTION = "mention"  # @username
        ROOM = "room"  # @room: every member
        HERE = "here"  # @here: the members online then

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notifications"
    )
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.MENTION)
    # The event that caused it: handling the same event twice creates nothing new.
    event_id = models.UUIDField()
    room = models.ForeignKey("rooms.Room", on_delete=models.CASCADE, related_name="+")
    seq = models.BigIntegerField(null=True, blank=True)
    message_id = models.BigIntegerField(null=True, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    excerpt = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    read_at = models.DateTimeField(null=True, blank=True)
    # When the unread-notification email listed it (apps.notifications.email): once only.
    emailed_at = models.DateTimeField(null=True, blank=True)

    objects = NotificationQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "event_id"], name="notification_user_event")
        ]
        indexes = [
            models.Index(fields=["user", "read_at"]),
            # A deleted message's notifications (their excerpt is its text) go with it.
            models.Index(fields=["message_id"], name="notification_message"),
            # The email task's scan: unread and not yet emailed, oldest first.
            models.Index(
                fields=["created_at"],
                name="notification_email_due",
                condition=models.Q(read_at__isnull=True, emailed_at__isnull=True),
            ),
        ]
        ordering = ["-pk"]

    def __str__(self):
        return f"{self.kind} for {self.user_id} in room {self.room_id}"

    @property
    def is_read(self) -> bool:
        return self.read_at is not None


class RoomLevelQuerySet(models.QuerySet):
    def level_of(self, user):
        """The user's level in an outer room row, as an expression (None: the default)."""
        return Subquery(self.filter(room=OuterRef("pk"), user=user).values("level")[:1])


class RoomLevel(models.Model):
    """A member's notification level in one room (no row: the default, `mentions`).

    all: mentions notify, and the web client also alerts on every new message;
    mentions: only mentions notify; none: nothing notifies (not even a mention)."""

    class Level(models.TextChoices):
        ALL = "all"
        MENTIONS = "mentions"
        NONE = "none"

    DEFAULT = Level.MENTIONS

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    room = models.ForeignKey("rooms.Room", on_delete=models.CASCADE, related_name="+")
    level = models.CharField(max_length=10, choices=Level.choices, default=Level.MENTIONS)

    objects = RoomLevelQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["room", "user"], name="room_level_room_user")
        ]

    def __str__(self):
        return f"{self.user_id} in room {self.room_id}: {self.level}"


class MentionCursor(models.Model):
    """Per room, the last seq whose events the mention worker has read (a cursor over the
    event log: apps.notifications.mentions). A room without a row starts at 0."""

    room = models.OneToOneField(
        "rooms.Room", on_delete=models.CASCADE, primary_key=True, related_name="+"
    )
    seq = models.BigIntegerField(default=0)

    def __str__(self):
        return f"room {self.room_id} read to {self.seq}"
