from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.db import models
from django.utils import timezone


class User(AbstractUser):
    """The chat's user. Custom from the first migration so fields can be added later."""

    class DmPolicy(models.TextChoices):
        ANYONE = "anyone"
        SHARED_ROOMS = "shared_rooms"  # people who share a public or private room with you
        NOBODY = "nobody"

    # Who may open a direct room with this user (PROTOCOL §7).
    dm_policy = models.CharField(max_length=12, choices=DmPolicy.choices,
                                 default=DmPolicy.ANYONE)

    class Meta(AbstractUser.Meta):
        swappable = "AUTH_USER_MODEL"

    def actor(self) -> dict:
        """The user as an envelope `actor` / `user` object."""
        return {"id": self.pk, "username": self.username}


class Block(models.Model):
    """`blocker` blocked `blocked`: no direct room between them from the blocked side, no
    posting in an existing one, and the blocker's clients hide the blocked user's messages."""

    blocker = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                                related_name="blocks")
    blocked = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                                related_name="blocked_by")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["blocker", "blocked"], name="block_pair_unique"),
            models.CheckConstraint(condition=~models.Q(blocker=models.F("blocked")),
                                   name="block_not_self"),
        ]
        indexes = [models.Index(fields=["blocked", "blocker"])]
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.blocker} blocks {self.blocked}"
