"""An uploaded file: stored through the `uploads` storage, attached to at most one message."""

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone


class UploadQuerySet(models.QuerySet):
    def unused_before(self, cutoff):
        """Uploads never attached to a message, made before `cutoff` (the purge's)."""
        return self.filter(message__isnull=True, created_at__lt=cutoff)

    def of_messages(self, message_ids):
        return self.filter(message_id__in=list(message_ids))


class Upload(models.Model):
    # A random id: the file's key in storage and in URLs is never guessable from another's.
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    # Set by the send that attaches it (in the send's transaction); null: not sent yet. A
    # string reference: this app sits below messaging and imports none of its modules.
    message = models.ForeignKey(
        "messaging.Message",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="attachments",
    )
    position = models.PositiveSmallIntegerField(default=0)  # order within the message
    name = models.CharField(max_length=255)  # sanitized (apps.attachments.files)
    size = models.BigIntegerField()
    content_type = models.CharField(max_length=100)  # sniffed from the bytes
    file = models.CharField(max_length=255)  # the storage name
    thumbnail = models.CharField(max_length=255, blank=True, default="")  # "" until made
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = UploadQuerySet.as_manager()

    class Meta:
        indexes = [
            models.Index(fields=["message", "position"], name="upload_message"),
            models.Index(
                fields=["created_at"],
                name="upload_unused",
                condition=models.Q(message__isnull=True),
            ),
        ]

    def __str__(self):
        return f"{self.name} ({self.content_type}, {self.size} bytes)"

    @property
    def is_image(self) -> bool:
        return self.content_type in IMAGE_TYPES


# Raster types Pillow decodes and a browser shows inline (never SVG: it can carry script).
IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
