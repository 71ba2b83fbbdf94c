import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.db.models.functions import Now
from django.utils import timezone

from apps.rooms.models import Room

from .managers import MessageQuerySet, ReactionQuerySet


class Message(models.Model):
    # Indexes (every send inserts into each): room and author need none of their own, the
    # unique (room, seq) and (author, client_id) lead with them; reply_to, thread and
    # deleted_by are NULL on most rows, so their indexes are partial. Nine index entries a
    # message became five, and a message's WAL 1,316 -> 970 bytes (bench/RESULTS.md,
    # 4 December).
    room = models.ForeignKey(
        Room, on_delete=models.CASCADE, related_name="messages", db_index=False
    )
    # PROTECT (and Reaction.user, Membership.user, Event.actor): deleting a user never takes
    # their messages or the log with it; an account is erased instead (apps.messaging.erasure).
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="messages", db_index=False
    )
    body = models.TextField()
    reply_to = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="replies",
        db_index=False,
    )
    # Threads (PROTOCOL §8): a reply's `thread` is its root (replies to replies join the
    # root's thread); a root's reply_count and last_reply_seq count its live replies, kept
    # under the room lock by every send and deletion (apps.messaging.threads).
    thread = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="thread_replies",
        db_index=False,
    )
    reply_count = models.PositiveIntegerField(default=0, db_default=0)
    last_reply_seq = models.BigIntegerField(null=True, blank=True)
    # Sending again with the same (author, client_id) returns the original message.
    client_id = models.UUIDField(default=uuid.uuid4)
    # The seq of the message.created event that recorded it.
    seq = models.BigIntegerField()
    created_at = models.DateTimeField(default=timezone.now)
    edited_at = models.DateTimeField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)
    deleted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,
    )

    objects = MessageQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["author", "client_id"], name="message_author_client_id"
            ),
            models.UniqueConstraint(fields=["room", "seq"], name="message_room_seq"),
        ]
        indexes = [
            models.Index(
                fields=["thread", "seq"],
                name="message_thread_seq",
                condition=Q(thread__isnull=False),
            ),
            models.Index(
                fields=["reply_to"], name="message_reply_to", condition=Q(reply_to__isnull=False)
            ),
            models.Index(
                fields=["deleted_by"],
                name="message_deleted_by",
                condition=Q(deleted_by__isnull=False),
            ),
        ]

    def __str__(self):
        return f"#{self.pk} in {self.room_id} by {self.author_id}"

    @property
    def is_deleted(self) -> bool:
        return self.deleted_at is not None


class Reaction(models.Model):
    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="reactions")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    emoji = models.CharField(max_length=32)
    created_at = models.DateTimeField(default=timezone.now)

    objects = ReactionQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["message", "user", "emoji"], name="reaction_unique")
        ]


class ThreadFollow(models.Model):
    """A user following a thread (its root message), with their read position in it.

    Made for the root's author and every replier when they reply; `following` false keeps
    an explicit unfollow (a later reply of theirs follows again; another's does not)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    root = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="follows")
    following = models.BooleanField(default=True, db_default=True)
    # The seq of the last reply the user has read (0: none).
    last_read_seq = models.BigIntegerField(default=0, db_default=0)
    created_at = models.DateTimeField(default=timezone.now, db_default=Now())

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "root"], name="thread_follow_user_root"),
        ]
        indexes = [models.Index(fields=["user", "following"], name="thread_follow_user")]
