from django.conf import settings
from django.db import models
from django.utils import timezone

from .managers import MembershipQuerySet, RoomQuerySet

SLOW_MODE_MAX_SECONDS = 6 * 3600


class Room(models.Model):
    class Kind(models.TextChoices):
        PUBLIC = "public"
        PRIVATE = "private"
        DIRECT = "direct"

    class PostPolicy(models.TextChoices):
        EVERYONE = "everyone"
        MODERATORS = "moderators"  # announcement rooms: only the owner and moderators post

    name = models.CharField(max_length=100)
    topic = models.CharField(max_length=500, blank=True, default="")
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.PUBLIC)
    # For direct rooms: "<low user id>:<high user id>", so a pair has one direct room.
    direct_key = models.CharField(max_length=64, null=True, blank=True, unique=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    archived_at = models.DateTimeField(null=True, blank=True)
    # The room's event sequence: the last seq handed out. Allocated under this row's lock,
    # so seq has no gaps and follows commit order (see apps.events.services.record_event).
    last_seq = models.BigIntegerField(default=0)
    # Slow mode: a member who is not a moderator posts at most once per this many seconds.
    slow_mode_seconds = models.PositiveIntegerField(default=0)
    post_policy = models.CharField(
        max_length=12, choices=PostPolicy.choices, default=PostPolicy.EVERYONE
    )
    # Retention (PROTOCOL §6): days a message and its events are kept; null = the site default
    # (settings.RETENTION_DAYS, itself unset = forever). The purge (apps.messaging.retention)
    # removes the log's oldest events and moves history_start: the first seq still held
    # (1 until anything is purged; last_seq + 1 when everything was).
    retention_days = models.PositiveIntegerField(null=True, blank=True)
    history_start = models.BigIntegerField(default=1)

    objects = RoomQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        permissions = [("moderate_room", "Can moderate every room (site moderators)")]

    def __str__(self):
        return f"{self.name} (#{self.pk})"

    @property
    def is_archived(self) -> bool:
        return self.archived_at is not None

    def as_dict(self) -> dict:
        """The room object carried in room events."""
        return {
            "id": self.pk,
            "name": self.name,
            "topic": self.topic,
            "kind": self.kind,
            "archived": self.is_archived,
            "created_by": self.created_by_id,
            "slow_mode_seconds": self.slow_mode_seconds,
            "post_policy": self.post_policy,
            "retention_days": self.retention_days,
        }


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner"
        MODERATOR = "moderator"
        MEMBER = "member"

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="memberships"
    )
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    is_active = models.BooleanField(default=True)
    joined_at = models.DateTimeField(default=timezone.now)
    muted_until = models.DateTimeField(null=True, blank=True)
    banned_at = models.DateTimeField(null=True, blank=True)
    banned_until = models.DateTimeField(null=True, blank=True)
    ban_reason = models.CharField(max_length=500, blank=True, default="")
    last_read_seq = models.BigIntegerField(default=0)
    # When the member last posted, kept only in slow-mode rooms (what slow mode checks).
    last_posted_at = models.DateTimeField(null=True, blank=True)

    objects = MembershipQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["room", "user"], name="membership_room_user_unique")
        ]
        indexes = [models.Index(fields=["user", "is_active"])]

    def __str__(self):
        return f"{self.user} in {self.room} ({self.role})"

    @property
    def is_moderator(self) -> bool:
        return self.is_active and self.role in (self.Role.OWNER, self.Role.MODERATOR)

    def is_muted(self, now=None) -> bool:
        return self.muted_until is not None and self.muted_until > (now or timezone.now())

    def is_banned(self, now=None) -> bool:
        if self.banned_at is None:
            return False
        return self.banned_until is None or self.banned_until > (now or timezone.now())


class ModerationAction(models.Model):
    """The audit trail: who did what to whom, when and why."""

    class Action(models.TextChoices):
        BAN = "ban"
        UNBAN = "unban"
        MUTE = "mute"
        UNMUTE = "unmute"
        KICK = "kick"
        ROLE = "role"
        DELETE_MESSAGE = "delete_message"
        ARCHIVE = "archive"
        DISMISS_REPORT = "dismiss_report"
        DEACTIVATE = "deactivate"  # site-wide: no room

    room = models.ForeignKey(
        Room, null=True, blank=True, on_delete=models.CASCADE, related_name="moderation_actions"
    )
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    target_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    target_message_id = models.BigIntegerField(null=True, blank=True)
    action = models.CharField(max_length=20, choices=Action.choices)
    reason = models.CharField(max_length=500, blank=True, default="")
    details = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.action} by {self.actor} in {self.room}"
