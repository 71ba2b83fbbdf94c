"""Room and membership representations for the REST API."""

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from apps.events.catalogue import EVENT_TYPES
from apps.users.api import UserSerializer

from .models import SLOW_MODE_MAX_SECONDS, Membership, Room


class MyMembershipSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=Membership.Role.choices)
    last_read_seq = serializers.IntegerField()
    muted_until = serializers.DateTimeField(allow_null=True)
    notify = serializers.ChoiceField(
        choices=["all", "mentions", "none"],
        help_text="Your notification level here (PATCH /api/rooms/{id}/membership/).",
    )


class RoomSerializer(serializers.Serializer):
    """A room as the caller sees it, with their membership (null if not a member) and unread count.

    Expects a queryset annotated by `apps.rooms.api.seen_by(rooms, user)`.
    """

    id = serializers.IntegerField(read_only=True)
    name = serializers.CharField(read_only=True)
    topic = serializers.CharField(read_only=True)
    kind = serializers.ChoiceField(choices=Room.Kind.choices, read_only=True)
    archived = serializers.BooleanField(source="is_archived", read_only=True)
    created_by = serializers.IntegerField(source="created_by_id", read_only=True, allow_null=True)
    created_at = serializers.DateTimeField(read_only=True)
    last_seq = serializers.IntegerField(read_only=True)
    slow_mode_seconds = serializers.IntegerField(
        read_only=True,
        help_text="Slow mode: members who are not moderators post at most once "
        "per this many seconds (0 = off).",
    )
    post_policy = serializers.ChoiceField(
        choices=Room.PostPolicy.choices,
        read_only=True,
        help_text="'moderators': only the room's moderators post (announcement rooms).",
    )
    retention_days = serializers.IntegerField(
        read_only=True,
        allow_null=True,
        help_text="Days messages are kept in this room; null = the site default.",
    )
    history_start = serializers.IntegerField(
        read_only=True, help_text="The first seq still held (older events were purged)."
    )
    membership = serializers.SerializerMethodField()
    unread = serializers.SerializerMethodField(
        help_text="Live messages by others after the caller's read position (0 for non-members)."
    )
    mentions = serializers.SerializerMethodField(
        help_text="The caller's unread notifications (mentions) in the room after their read "
        "position; reading the room clears them."
    )

    @extend_schema_field(MyMembershipSerializer(allow_null=True))
    def get_membership(self, room):
        role = getattr(room, "my_role", None)
        if role is None:
            return None
        return {
            "role": role,
            "last_read_seq": room.my_last_read_seq,
            "muted_until": serializers.DateTimeField().to_representation(room.my_muted_until)
            if room.my_muted_until
            else None,
            "notify": getattr(room, "my_notify", None) or "mentions",
        }

    def get_unread(self, room) -> int:
        return getattr(room, "unread", 0) or 0

    def get_mentions(self, room) -> int:
        return getattr(room, "mentions", 0) if getattr(room, "my_role", None) else 0


class RoomCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    kind = serializers.ChoiceField(
        choices=[Room.Kind.PUBLIC, Room.Kind.PRIVATE], default=Room.Kind.PUBLIC
    )
    topic = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")
    members = serializers.ListField(
        child=serializers.IntegerField(min_value=1),
        required=False,
        default=list,
        max_length=100,
        help_text="User ids to add as members at once.",
    )


class RoomUpdateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100, required=False)
    topic = serializers.CharField(max_length=500, required=False, allow_blank=True)
    slow_mode_seconds = serializers.IntegerField(
        required=False,
        min_value=0,
        max_value=SLOW_MODE_MAX_SECONDS,
        help_text="0 turns slow mode off.",
    )
    post_policy = serializers.ChoiceField(choices=Room.PostPolicy.choices, required=False)
    retention_days = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        max_value=36500,
        help_text="Days messages are kept (1-36500); null = the site default (RETENTION_DAYS).",
    )


class UserRefSerializer(serializers.Serializer):
    user = serializers.IntegerField(min_value=1, help_text="A user id.")


class ReadSerializer(serializers.Serializer):
    seq = serializers.IntegerField(min_value=0, help_text="The last seq the caller has seen.")


class ReadResultSerializer(serializers.Serializer):
    last_read_seq = serializers.IntegerField()
    unread = serializers.IntegerField()


PRIVATE_MEMBER_FIELDS = (
    "is_active",
    "muted_until",
    "banned",
    "banned_until",
    "ban_reason",
    "last_read_seq",
)


class MemberSerializer(serializers.Serializer):
    """A membership. The fields after `joined_at` are shown only to the member themself and
    to the room's moderators (and site moderators): pass `context={"full": bool}` or
    `{"full_for": user id}` to choose; without context all are shown."""

    user = UserSerializer(read_only=True)
    role = serializers.ChoiceField(choices=Membership.Role.choices, read_only=True)
    joined_at = serializers.DateTimeField(read_only=True)
    is_active = serializers.BooleanField(required=False)
    muted_until = serializers.DateTimeField(required=False, allow_null=True)
    banned = serializers.SerializerMethodField()
    banned_until = serializers.DateTimeField(required=False, allow_null=True)
    ban_reason = serializers.CharField(required=False)
    last_read_seq = serializers.IntegerField(required=False)

    @extend_schema_field(serializers.BooleanField(required=False))
    def get_banned(self, membership) -> bool:
        return membership.is_banned()

    def to_representation(self, membership):
        data = super().to_representation(membership)
        full = self.context.get("full", True)
        if not full and membership.user_id != self.context.get("full_for"):
            for name in PRIVATE_MEMBER_FIELDS:
                data.pop(name, None)
        return data


class ReasonSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")


class BanSerializer(ReasonSerializer):
    until = serializers.DateTimeField(
        required=False,
        allow_null=True,
        default=None,
        help_text="When the ban ends (ISO 8601 with zone); null or absent = permanent.",
    )


class MuteSerializer(ReasonSerializer):
    until = serializers.DateTimeField(
        allow_null=True, help_text="When the mute ends (ISO 8601 with zone); null lifts it."
    )


class RoleSerializer(serializers.Serializer):
    # The full choice set keeps one Role enum in the schema; the service refuses "owner".
    role = serializers.ChoiceField(
        choices=Membership.Role.choices, help_text="'moderator' or 'member'"
    )


class EventActorSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()


class EnvelopeSerializer(serializers.Serializer):
    """The event envelope (PROTOCOL §1), exactly as stored and sent on the WebSocket and Kafka."""

    id = serializers.UUIDField()
    type = serializers.ChoiceField(choices=EVENT_TYPES)
    room = serializers.IntegerField(allow_null=True)
    seq = serializers.IntegerField(allow_null=True)
    ts = serializers.CharField(help_text="Commit time, UTC, ISO 8601 with microseconds and Z.")
    actor = EventActorSerializer(allow_null=True)
    data = serializers.DictField(help_text="Type-specific fields (PROTOCOL §2).")


class EventPageSerializer(serializers.Serializer):
    results = EnvelopeSerializer(many=True)
    next = serializers.CharField(allow_null=True, help_text="URL of the next page, or null.")
    last_seq = serializers.IntegerField(help_text="The room's newest seq now.")
    history_start = serializers.IntegerField(
        help_text="The first seq still held: older events were removed by retention."
    )


class RoomPageSerializer(serializers.Serializer):
    results = RoomSerializer(many=True)
    next = serializers.CharField(allow_null=True)


class MemberPageSerializer(serializers.Serializer):
    results = MemberSerializer(many=True)
    next = serializers.CharField(allow_null=True)
