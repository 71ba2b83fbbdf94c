"""REST: sign-up, tokens, the caller's profile, and finding people (usernames only)."""

from django.contrib.auth import authenticate, get_user_model
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.authtoken.models import Token
from rest_framework.generics import GenericAPIView
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.response import Response

from apps.rooms.services import is_site_moderator
from chatproject.errors import ServiceError

from . import services
from .passwords import hashing_slot
from .throttles import SignupThrottle, TokenThrottle

User = get_user_model()
SEARCH_LIMIT = 20


class UserSerializer(serializers.Serializer):
    """A person as other users see them: the envelope's `actor` shape."""

    id = serializers.IntegerField(read_only=True)
    username = serializers.CharField(read_only=True)


class MeSerializer(UserSerializer):
    email = serializers.CharField(read_only=True)  # blank when not given: not always an email
    date_joined = serializers.DateTimeField(read_only=True)
    is_staff = serializers.BooleanField(read_only=True)
    is_moderator = serializers.SerializerMethodField(
        help_text="Site moderator: may moderate every room."
    )

    def get_is_moderator(self, user) -> bool:
        return is_site_moderator(user)


class SignupSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(write_only=True, trim_whitespace=False, max_length=128)
    email = serializers.EmailField(required=False, allow_blank=True, default="")


class TokenRequestSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(write_only=True, trim_whitespace=False, max_length=128)


class TokenSerializer(serializers.Serializer):
    token = serializers.CharField(read_only=True)


class UsersApi(GenericAPIView):
    """GET: find people by username (to invite or message). POST: sign up (when enabled)."""

    serializer_class = SignupSerializer
    queryset = User.objects.none()

    def get_permissions(self):
        return [AllowAny()] if self.request.method == "POST" else [IsAuthenticated()]

    def get_throttles(self):
        return [SignupThrottle()] if self.request.method == "POST" else []

    def get_authenticators(self):
        # Sign-up needs no session, and so no CSRF token (the browsable API still logs in).
        if self.request is not None and self.request.method == "POST":
            return []
        return super().get_authenticators()

    @extend_schema(
        parameters=[OpenApiParameter("search", str, description="Part of a username")],
        responses=UserSerializer(many=True),
    )
    def get(self, request):
        search = request.query_params.get("search", "").strip()[:150]
        users = User.objects.filter(is_active=True).exclude(pk=request.user.pk)
        if search:
            users = users.filter(username__icontains=search)
        users = users.order_by("username")[:SEARCH_LIMIT]
        return Response(UserSerializer(users, many=True).data)

    @extend_schema(request=SignupSerializer, responses={201: MeSerializer})
    def post(self, request):
        form = SignupSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        with hashing_slot(request):
            user = services.user_signup(**form.validated_data)
        return Response(MeSerializer(user).data, status=status.HTTP_201_CREATED)


class TokenApi(GenericAPIView):
    """Exchange a username and password for the API token (`Authorization: Token <key>`)."""

    serializer_class = TokenRequestSerializer
    permission_classes = [AllowAny]
    authentication_classes = []
    throttle_classes = [TokenThrottle]

    @extend_schema(request=TokenRequestSerializer, responses={200: TokenSerializer})
    def post(self, request):
        form = TokenRequestSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        with hashing_slot(request):
            user = authenticate(
                request,
                username=User.normalize_username(form.validated_data["username"]),
                password=form.validated_data["password"],
            )
        if user is None or not user.is_active:
            raise ServiceError("unauthenticated", "wrong username or password")
        token, _ = Token.objects.get_or_create(user=user)
        return Response({"token": token.key})


class MeApi(GenericAPIView):
    """The authenticated caller."""

    serializer_class = MeSerializer

    def get(self, request):
        return Response(MeSerializer(request.user).data)
