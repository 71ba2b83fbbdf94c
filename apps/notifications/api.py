"""REST for notifications: GET /api/notifications/, mark read one, several or all."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.generics import GenericAPIView
from rest_framework.response import Response

from apps.core.api import LIMIT, ErrorSerializer, int_param, limit_param, next_url
from apps.core.errors import invalid
from apps.rooms.api import REFUSED, RoomScopedApi, room_data
from apps.rooms.serializers import RoomSerializer

from . import services
from .models import Notification

PAGE = (50, 200)


class ActorSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()


class NotificationSerializer(serializers.ModelSerializer):
    actor = ActorSerializer(allow_null=True)
    room = serializers.IntegerField(source="room_id")
    message = serializers.IntegerField(source="message_id", allow_null=True)
    read = serializers.BooleanField(source="is_read")

    class Meta:
        model = Notification
        fields = [
            "id",
            "kind",
            "room",
            "seq",
            "message",
            "actor",
            "excerpt",
            "event_id",
            "created_at",
            "read",
            "read_at",
        ]


class NotificationPageSerializer(serializers.Serializer):
    results = NotificationSerializer(many=True)
    next = serializers.CharField(allow_null=True)
    unread = serializers.IntegerField()


class LevelSerializer(serializers.Serializer):
    notify = serializers.ChoiceField(choices=["all", "mentions", "none"])


class MarkReadSerializer(serializers.Serializer):
    ids = serializers.ListField(child=serializers.IntegerField(), required=False)
    all = serializers.BooleanField(required=False, default=False)


class MarkedSerializer(serializers.Serializer):
    marked = serializers.IntegerField()


class NotificationsApi(GenericAPIView):
    """The user's notifications, newest first (?unread=true, ?before=ID, ?limit=N)."""

    serializer_class = NotificationPageSerializer

    @extend_schema(
        parameters=[
            OpenApiParameter("unread", bool, description="Only unread notifications"),
            OpenApiParameter("before", int, description="Cursor: ids below this one"),
            LIMIT,
        ],
        responses={200: NotificationPageSerializer, 400: ErrorSerializer},
    )
    def get(self, request):
        limit = limit_param(request, PAGE)
        before = int_param(request, "before", minimum=1)
        unread = request.query_params.get("unread", "").lower()
        if unread not in ("", "true", "false", "1", "0"):
            raise invalid("unread must be true or false")
        mine = Notification.objects.for_user(request.user)
        rows = mine.select_related("actor").before(before).newest_first()
        if unread in ("true", "1"):
            rows = rows.unread()
        page = list(rows[: limit + 1])
        more = len(page) > limit
        page = page[:limit]
        return Response(
            {
                "results": NotificationSerializer(page, many=True).data,
                "next": next_url(request, before=page[-1].pk) if more else None,
                "unread": mine.unread().count(),
            }
        )


class NotificationReadApi(GenericAPIView):
    """Mark one notification read."""

    rate_budget = "read"

    serializer_class = NotificationSerializer

    @extend_schema(
        request=None,
        responses={
            200: NotificationSerializer,
            404: OpenApiResponse(ErrorSerializer, description="Not yours, or no such id"),
        },
    )
    def post(self, request, notification_id):
        notification = services.notification_mark_read(
            user=request.user, notification_id=notification_id
        )
        return Response(NotificationSerializer(notification).data)


class NotificationsReadApi(GenericAPIView):
    """Mark several ({"ids": [...]}) or all ({"all": true}) notifications read."""

    rate_budget = "read"

    serializer_class = MarkReadSerializer

    @extend_schema(
        operation_id="notifications_read_many",
        request=MarkReadSerializer,
        responses={200: MarkedSerializer, 400: ErrorSerializer},
    )
    def post(self, request):
        data = request.data if isinstance(request.data, dict) else None
        if data is None:
            raise invalid("expected a JSON object")
        marked = services.notifications_mark_read(
            user=request.user, ids=data.get("ids"), all=data.get("all") is True
        )
        return Response({"marked": marked})


class MembershipLevelApi(RoomScopedApi):
    """Your notification level in the room: {"notify": "all" | "mentions" | "none"}.

    all: mentions notify you, and the web client alerts on every new message; mentions (the
    default): only @you, @room and @here notify you; none: nothing here notifies you."""

    rate_budget = "read"  # a setting of one's own, like a read receipt

    serializer_class = LevelSerializer

    @extend_schema(request=LevelSerializer, responses={200: RoomSerializer, **REFUSED})
    def patch(self, request, room_id):
        data = request.data if isinstance(request.data, dict) else None
        if data is None or set(data) != {"notify"}:
            raise invalid('expected {"notify": "all" | "mentions" | "none"}')
        services.room_level_set(room=self.room, user=request.user, level=data["notify"])
        return Response(room_data(self.room, request.user))
