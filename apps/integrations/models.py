"""Webhooks (PROTOCOL §10): incoming per room, outgoing as durable cursors over the event log."""

from django.conf import settings
from django.db import models
from django.utils import timezone


class IncomingWebhook(models.Model):
    """`POST /api/hooks/<key>/` posts in `room` as `bot` (the room's webhook bot). Only a
    SHA-256 of the key's secret half is kept, as for API tokens."""

    room = models.ForeignKey("rooms.Room", on_delete=models.CASCADE, related_name="webhooks")
    bot = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    name = models.CharField(max_length=100, blank=True, default="")
    key_id = models.CharField(max_length=16, unique=True, editable=False)
    digest = models.CharField(max_length=64, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"incoming webhook {self.pk} of room {self.room_id}"


class OutgoingWebhook(models.Model):
    """Events of `rooms` (None: every room the owner may read) and `types` (None: every durable
    type) POSTed to `url`, signed with `secret` (kept in clear: the server signs with it)."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhooks"
    )
    url = models.CharField(max_length=2000)  # checked by apps.integrations.ssrf
    secret = models.CharField(max_length=200)
    rooms = models.JSONField(null=True, blank=True)
    types = models.JSONField(null=True, blank=True)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["pk"]

    def __str__(self):
        return f"webhook {self.pk} → {self.url}"


class WebhookCursor(models.Model):
    """The last seq of `room` delivered to the webhook (a 2xx), and the retry state of the
    next delivery. `generation` grows with every replay, so a delivery that was in flight
    when the cursor was rewound cannot move it forward again."""

    webhook = models.ForeignKey(OutgoingWebhook, on_delete=models.CASCADE, related_name="cursors")
    room = models.ForeignKey("rooms.Room", on_delete=models.CASCADE, related_name="+")
    seq = models.BigIntegerField(default=0)
    generation = models.PositiveIntegerField(default=0)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["webhook", "room"], name="webhook_cursor_unique")
        ]
        ordering = ["webhook", "room"]

    def __str__(self):
        return f"webhook {self.webhook_id} room {self.room_id} at {self.seq}"
