"""REST for webhooks (PROTOCOL §10)."""

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.generics import GenericAPIView
from rest_framework.permissions import AllowAny
from rest_framework.response import Response

from apps.core.api import created, shown_once, validated
from apps.core.errors import forbidden, not_found
from apps.rooms import services as rooms
from apps.rooms.api import RoomScopedApi

from . import services
from .models import IncomingWebhook, OutgoingWebhook

LIST_LIMIT = 200


def hook_url(request, key: str) -> str:
    return request.build_absolute_uri(f"/api/hooks/{key}/")


class IncomingSerializer(serializers.ModelSerializer):
    bot = serializers.IntegerField(source="bot_id", read_only=True)

    class Meta:
        model = IncomingWebhook
        fields = ["id", "room", "name", "bot", "created_at"]


IncomingCreatedSerializer = shown_once(
    IncomingSerializer, "url", "POST here; holds the secret (once)."
)


class IncomingCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")


class IncomingPostSerializer(serializers.Serializer):
    body = serializers.CharField(trim_whitespace=False)
    client_id = serializers.UUIDField(required=False)


class RoomWebhooksApi(RoomScopedApi):
    """The room's incoming webhooks (its moderators). POST: a new one; its URL (which holds
    the secret) is in this answer only."""

    serializer_class = IncomingCreateSerializer

    @extend_schema(responses=IncomingSerializer(many=True))
    def get(self, request, room_id):
        rooms.check_can_moderate(self.room, request.user)
        hooks = IncomingWebhook.objects.filter(room=self.room)[:LIST_LIMIT]
        return Response(IncomingSerializer(hooks, many=True).data)

    @extend_schema(request=IncomingCreateSerializer, responses={201: IncomingCreatedSerializer})
    def post(self, request, room_id):
        data = validated(IncomingCreateSerializer, request)
        hook, key = services.incoming_create(room=self.room, actor=request.user, name=data["name"])
        return created(IncomingSerializer, hook, url=hook_url(request, key))


class RoomWebhookDetailApi(RoomScopedApi):
    """DELETE: revoke one of the room's incoming webhooks (its moderators)."""

    serializer_class = IncomingSerializer

    @extend_schema(request=None, responses={204: None})
    def delete(self, request, room_id, hook_id):
        services.incoming_delete_by_moderator(room=self.room, actor=request.user, hook_id=hook_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class IncomingHookApi(GenericAPIView):
    """The incoming webhook's URL: POST `{"body", "client_id"?}` (or an `Idempotency-Key`
    header) posts as the room's webhook bot; the same key again returns the same message
    (200). DELETE revokes the webhook. The URL is the credential: no session, no token."""

    serializer_class = IncomingPostSerializer
    permission_classes = [AllowAny]
    authentication_classes = []
    throttle_classes = []  # the bot's write bucket (services.incoming_post)
    queryset = IncomingWebhook.objects.none()

    @extend_schema(request=IncomingPostSerializer, responses={201: dict, 200: dict})
    def post(self, request, key):
        hook = services.incoming_for_key(key)
        form = IncomingPostSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        event, created = services.incoming_post(
            hook=hook,
            body=form.validated_data["body"],
            client_id=form.validated_data.get("client_id"),
            idempotency_key=request.headers.get("Idempotency-Key"),
        )
        return Response(
            event.envelope, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )

    @extend_schema(request=None, responses={204: None})
    def delete(self, request, key):
        services.incoming_delete(hook=services.incoming_for_key(key))
        return Response(status=status.HTTP_204_NO_CONTENT)


class OutgoingSerializer(serializers.ModelSerializer):
    class Meta:
        model = OutgoingWebhook
        fields = ["id", "url", "rooms", "types", "is_active", "created_at"]


class CursorSerializer(serializers.Serializer):
    room = serializers.IntegerField()
    cursor = serializers.IntegerField(allow_null=True, help_text="Last seq delivered (a 2xx)")
    lag = serializers.IntegerField(allow_null=True, help_text="Events of the room not delivered")
    last_error = serializers.CharField(allow_null=True)
    attempts = serializers.IntegerField(help_text="Failed attempts since the last success")
    next_attempt_at = serializers.DateTimeField(allow_null=True)
    delivered_at = serializers.DateTimeField(allow_null=True)


class OutgoingDetailSerializer(OutgoingSerializer):
    cursors = CursorSerializer(many=True, read_only=True)

    class Meta(OutgoingSerializer.Meta):
        fields = [*OutgoingSerializer.Meta.fields, "cursors"]


class OutgoingCreateSerializer(serializers.Serializer):
    url = serializers.CharField(max_length=2000)
    secret = serializers.CharField(max_length=services.SECRET_MAX, trim_whitespace=False)
    rooms = serializers.ListField(
        child=serializers.IntegerField(),
        required=False,
        allow_null=True,
        help_text="Omitted: every room you may read",
    )
    types = serializers.ListField(
        child=serializers.CharField(),
        required=False,
        allow_null=True,
        help_text="Omitted: every room-log type",
    )


class ReplaySerializer(serializers.Serializer):
    room = serializers.IntegerField(min_value=1, max_value=2**63 - 1)
    since = serializers.IntegerField(min_value=0, max_value=2**63 - 1)


def _own_hook(request, webhook_id) -> OutgoingWebhook:
    hook = (
        OutgoingWebhook.objects.select_related("owner")
        .filter(pk=webhook_id, owner=request.user)
        .first()
    )
    if hook is None:
        raise not_found("webhook not found")
    return hook


class WebhooksApi(GenericAPIView):
    """GET: your outgoing webhooks. POST: a new one (events from now on)."""

    serializer_class = OutgoingCreateSerializer
    queryset = OutgoingWebhook.objects.none()

    @extend_schema(responses=OutgoingSerializer(many=True))
    def get(self, request):
        hooks = OutgoingWebhook.objects.filter(owner=request.user)[:LIST_LIMIT]
        return Response(OutgoingSerializer(hooks, many=True).data)

    @extend_schema(request=OutgoingCreateSerializer, responses={201: OutgoingSerializer})
    def post(self, request):
        if request.user.is_bot:
            raise forbidden("bots cannot own webhooks")
        hook = services.webhook_create(
            owner=request.user, **validated(OutgoingCreateSerializer, request)
        )
        return created(OutgoingSerializer, hook)


class WebhookDetailApi(GenericAPIView):
    """GET: the webhook and, per room it follows, its `cursor`, `lag` and `last_error`.
    DELETE: remove it."""

    serializer_class = OutgoingDetailSerializer
    queryset = OutgoingWebhook.objects.none()

    def get(self, request, webhook_id):
        hook = _own_hook(request, webhook_id)
        return Response(
            {
                **OutgoingSerializer(hook).data,
                "cursors": CursorSerializer(services.webhook_status(hook), many=True).data,
            }
        )

    @extend_schema(request=None, responses={204: None})
    def delete(self, request, webhook_id):
        _own_hook(request, webhook_id).delete()
        return Response(status=status.HTTP_204_NO_CONTENT)


class WebhookReplayApi(GenericAPIView):
    """POST `{"room", "since"}`: rewind the webhook's cursor of the room to `since`."""

    serializer_class = ReplaySerializer
    queryset = OutgoingWebhook.objects.none()

    @extend_schema(request=ReplaySerializer, responses={200: CursorSerializer})
    def post(self, request, webhook_id):
        hook = _own_hook(request, webhook_id)
        form = ReplaySerializer(data=request.data)
        form.is_valid(raise_exception=True)
        services.webhook_replay(
            hook=hook, room_id=form.validated_data["room"], since=form.validated_data["since"]
        )
        row = next(
            r for r in services.webhook_status(hook) if r["room"] == form.validated_data["room"]
        )
        return Response(CursorSerializer(row).data)
