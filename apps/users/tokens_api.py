"""REST for API tokens and bot accounts (PROTOCOL §10)."""

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.generics import GenericAPIView
from rest_framework.response import Response

from apps.core.api import created, shown_once, validated
from apps.core.errors import forbidden

from . import tokens
from .models import ApiToken, User

LIST_LIMIT = 200


class ApiTokenSerializer(serializers.ModelSerializer):
    class Meta:
        model = ApiToken
        fields = ["id", "name", "scopes", "created_at", "expires_at", "last_used_at"]


ApiTokenCreatedSerializer = shown_once(ApiTokenSerializer, "token", "The secret: shown this once.")


class ApiTokenCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=tokens.NAME_MAX)
    scopes = serializers.ListField(
        child=serializers.ChoiceField(choices=ApiToken.SCOPES), min_length=1, max_length=2
    )
    expires_at = serializers.DateTimeField(required=False, allow_null=True)


def _no_bots(request):
    if request.user.is_bot:
        raise forbidden("a bot cannot manage tokens or bots")


class TokensApi(GenericAPIView):
    """GET: your API tokens (never their secrets). POST: a new one; its secret is in this
    answer only."""

    serializer_class = ApiTokenCreateSerializer
    queryset = ApiToken.objects.none()

    @extend_schema(responses=ApiTokenSerializer(many=True))
    def get(self, request):
        rows = ApiToken.objects.filter(user=request.user)[:LIST_LIMIT]
        return Response(ApiTokenSerializer(rows, many=True).data)

    @extend_schema(request=ApiTokenCreateSerializer, responses={201: ApiTokenCreatedSerializer})
    def post(self, request):
        _no_bots(request)
        data = validated(ApiTokenCreateSerializer, request)
        token, key = tokens.token_create(user=request.user, **data)
        return created(ApiTokenSerializer, token, token=key)


class TokenDetailApi(GenericAPIView):
    """DELETE: revoke the token (its sockets close with 4401)."""

    serializer_class = ApiTokenSerializer
    queryset = ApiToken.objects.none()

    @extend_schema(request=None, responses={204: None})
    def delete(self, request, token_id):
        tokens.token_revoke(user=request.user, token_id=token_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class BotSerializer(serializers.ModelSerializer):
    # Read-only and without the model field's regex: the schema's `\w` is ASCII to clients
    # (ECMAScript), Python's is Unicode, so a valid name like "D3å" looked invalid to them.
    username = serializers.CharField(read_only=True)
    owner = serializers.IntegerField(source="bot_owner_id", read_only=True)
    bot = serializers.BooleanField(source="is_bot", read_only=True)

    class Meta:
        model = User
        fields = ["id", "username", "bot", "owner", "date_joined"]


BotCreatedSerializer = shown_once(BotSerializer, "token", "The bot's token: shown this once.")


class BotCreateSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)


class BotsApi(GenericAPIView):
    """GET: your bots. POST `{"username"}`: a bot account you own, and its token (once)."""

    serializer_class = BotCreateSerializer
    queryset = User.objects.none()

    @extend_schema(responses=BotSerializer(many=True))
    def get(self, request):
        bots = User.objects.filter(bot_owner=request.user, is_bot=True, is_active=True)
        return Response(BotSerializer(bots.order_by("pk")[:LIST_LIMIT], many=True).data)

    @extend_schema(request=BotCreateSerializer, responses={201: BotCreatedSerializer})
    def post(self, request):
        _no_bots(request)
        data = validated(BotCreateSerializer, request)
        bot, _, key = tokens.bot_create(owner=request.user, username=data["username"])
        return created(BotSerializer, bot, token=key)


class BotDetailApi(GenericAPIView):
    """DELETE: deactivate your bot (its tokens go, its sockets close)."""

    serializer_class = BotSerializer
    queryset = User.objects.none()

    @extend_schema(request=None, responses={204: None})
    def delete(self, request, bot_id):
        tokens.bot_delete(owner=request.user, bot_id=bot_id)
        return Response(status=status.HTTP_204_NO_CONTENT)
