from django.conf import settings
from django.db import models
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


class Notification(models.Model):
    """Something a user should see later, made by a Kafka consumer (an @mention while away)."""

    class Kind(models.TextChoices):
        MENTION = "mention"

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

    objects = NotificationQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "event_id"], name="notification_user_event")
        ]
        indexes = [
            models.Index(fields=["user", "read_at"]),
            # A deleted message's notifications (their excerpt is its text) go with it.
            models.Index(fields=["message_id"], name="notification_message"),
        ]
        ordering = ["-pk"]

    def __str__(self):
        return f"{self.kind} for {self.user_id} in room {self.room_id}"

    @property
    def is_read(self) -> bool:
        return self.read_at is not None
