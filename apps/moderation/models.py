from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import models
from django.db.models import Q
from django.utils import timezone

from .managers import ReportQuerySet


class Report(models.Model):
    """A member's report of a message, and what a moderator did about it.

    `body` is a copy of the message as it was reported, for moderators only: it survives the
    author deleting (and the log redacting) the message, and is erased REPORT_RETENTION_DAYS
    after the report is handled (apps.moderation.tasks)."""

    class Category(models.TextChoices):
        SPAM = "spam"
        ABUSE = "abuse"
        OTHER = "other"

    class Status(models.TextChoices):
        OPEN = "open"
        RESOLVED = "resolved"
        DISMISSED = "dismissed"

    class Outcome(models.TextChoices):
        NONE = "", "—"
        DELETE = "delete", "Message deleted"
        MUTE = "mute", "Author muted"
        BAN = "ban", "Author banned"
        DISMISS = "dismiss", "Dismissed"

    reporter = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    message = models.ForeignKey(
        "messaging.Message", null=True, on_delete=models.SET_NULL, related_name="reports"
    )
    message_seq = models.BigIntegerField()  # where the message sits in the room's log
    room = models.ForeignKey("rooms.Room", on_delete=models.CASCADE, related_name="reports")
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    category = models.CharField(max_length=10, choices=Category.choices)
    reason = models.CharField(max_length=1000, blank=True, default="")
    body = models.TextField(blank=True, default="")  # the message as reported
    body_erased_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    created_at = models.DateTimeField(default=timezone.now)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    resolved_at = models.DateTimeField(null=True, blank=True)
    action = models.CharField(max_length=10, choices=Outcome.choices, blank=True, default="")
    resolution_reason = models.CharField(max_length=500, blank=True, default="")

    objects = ReportQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["reporter", "message"],
                condition=Q(status="open"),
                name="report_one_open_per_reporter_and_message",
            )
        ]
        indexes = [
            models.Index(fields=["status", "created_at"]),
            models.Index(fields=["room", "status"]),
        ]
        ordering = ["-created_at"]

    def __str__(self):
        return f"Report #{self.pk} ({self.category}) on message {self.message_id}"

    def as_data(self) -> dict:
        """data.report of report.created: never the reporter."""
        return {
            "id": self.pk,
            "message": self.message_id,
            "room": self.room_id,
            "category": self.category,
            "reason": self.reason,
        }


class Account(get_user_model()):
    """User accounts as moderators see them in the admin: read-only, deactivation only."""

    class Meta:
        proxy = True
        verbose_name = "account"
