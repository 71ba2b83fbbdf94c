"""Message representations for the REST API."""

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from apps.attachments.api import UploadSerializer
from apps.attachments.services import payload as attachment_payload
from apps.users.api import UserSerializer


class TextField(serializers.CharField):
    """A string, as sent: a number or a list is refused rather than turned into text."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class ReactionSummarySerializer(serializers.Serializer):
    emoji = serializers.CharField()
    count = serializers.IntegerField()
    me = serializers.BooleanField(help_text="The caller reacted with this emoji.")


class MessageSerializer(serializers.Serializer):
    """A message; a deleted one keeps its place (id, seq, author) but has no body.

    Pass `context={"user": ...}` for the `me` flag of reactions; expects reactions prefetched.
    """

    id = serializers.IntegerField()
    room = serializers.IntegerField(source="room_id")
    seq = serializers.IntegerField()
    author = UserSerializer()
    body = serializers.SerializerMethodField()
    reply_to = serializers.IntegerField(source="reply_to_id", allow_null=True)
    thread = serializers.IntegerField(
        source="thread_id",
        allow_null=True,
        help_text="The thread's root message id (replies only).",
    )
    reply_count = serializers.IntegerField(help_text="Live replies in the thread it roots.")
    last_reply_seq = serializers.IntegerField(allow_null=True)
    client_id = serializers.UUIDField()
    created_at = serializers.DateTimeField()
    edited_at = serializers.DateTimeField(allow_null=True)
    deleted = serializers.BooleanField(source="is_deleted")
    reactions = serializers.SerializerMethodField()
    attachments = serializers.SerializerMethodField()

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_body(self, message):
        return None if message.is_deleted else message.body

    @extend_schema_field(UploadSerializer(many=True))
    def get_attachments(self, message):
        """Signed links for the caller (expects `attachments` prefetched); none once deleted."""
        if message.is_deleted:
            return []
        user = self.context.get("user")
        uploads = sorted(message.attachments.all(), key=lambda u: u.position)
        return [attachment_payload(upload, user) for upload in uploads]

    @extend_schema_field(ReactionSummarySerializer(many=True))
    def get_reactions(self, message):
        if message.is_deleted:
            return []
        me = getattr(self.context.get("user"), "pk", None)
        summary: dict[str, dict] = {}
        for reaction in sorted(message.reactions.all(), key=lambda r: (r.created_at, r.pk)):
            entry = summary.setdefault(
                reaction.emoji, {"emoji": reaction.emoji, "count": 0, "me": False}
            )
            entry["count"] += 1
            entry["me"] = entry["me"] or reaction.user_id == me
        return list(summary.values())


class MessagePageSerializer(serializers.Serializer):
    results = MessageSerializer(many=True)
    next = serializers.CharField(
        allow_null=True, help_text="URL of the next (older) page, or null."
    )


class MessageSendSerializer(serializers.Serializer):
    body = TextField(trim_whitespace=False, allow_blank=True)
    client_id = serializers.UUIDField(
        required=False,
        help_text="Idempotency key chosen by the client: sending again returns the original.",
    )
    reply_to = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    attachments = serializers.ListField(
        child=serializers.UUIDField(),
        required=False,
        max_length=50,
        help_text="Ids of the caller's uploads not sent yet (POST /api/uploads/).",
    )


class MessageEditSerializer(serializers.Serializer):
    body = TextField(trim_whitespace=False, allow_blank=True)


class EmojiSerializer(serializers.Serializer):
    emoji = TextField(trim_whitespace=False, max_length=64)
