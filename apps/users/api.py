"""REST: sign-up, tokens, the caller's profile, and finding people (usernames only)."""

from django.contrib.auth import authenticate, get_user_model
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.authtoken.models import Token
from rest_framework.generics import GenericAPIView
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.response import Response

from apps.core.errors import ServiceError, invalid
from apps.messaging.erasure import account_erase

from . import services
from .models import Block
from .passwords import hashing_slot
from .services import is_site_moderator
from .throttles import SignupThrottle, TokenThrottle

User = get_user_model()
SEARCH_LIMIT = 20
BLOCKS_LIMIT = 1000
SEARCH_MIN = 2  # no listing of everybody: a search needs this many characters


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
    dm_policy = serializers.ChoiceField(
        choices=User.DmPolicy.choices,
        read_only=True,
        help_text="Who may open a direct room with you.",
    )

    def get_is_moderator(self, user) -> bool:
        return is_site_moderator(user)


class MeUpdateSerializer(serializers.Serializer):
    dm_policy = serializers.ChoiceField(choices=User.DmPolicy.choices, required=False)


class BlockSerializer(serializers.Serializer):
    user = UserSerializer(source="blocked", read_only=True)
    created_at = serializers.DateTimeField(read_only=True)


class BlockRequestSerializer(serializers.Serializer):
    user = serializers.IntegerField(min_value=1, max_value=2**63 - 1, help_text="A user id.")


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
        parameters=[
            OpenApiParameter(
                "search",
                str,
                required=True,
                description=f"Part of a username, at least {SEARCH_MIN} characters; at most "
                f"{SEARCH_LIMIT} people are returned",
            )
        ],
        responses=UserSerializer(many=True),
    )
    def get(self, request):
        search = request.query_params.get("search", "").strip()[:150]
        if len(search) < SEARCH_MIN:
            raise invalid(f"search needs at least {SEARCH_MIN} characters")
        users = User.objects.filter(is_active=True, username__icontains=search).exclude(
            pk=request.user.pk
        )
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


class EraseRequestSerializer(serializers.Serializer):
    password = serializers.CharField(write_only=True, trim_whitespace=False, max_length=128)


class MeApi(GenericAPIView):
    """The authenticated caller. PATCH sets `dm_policy`; DELETE erases the account
    (PROTOCOL §6)."""

    serializer_class = MeSerializer

    def get(self, request):
        return Response(MeSerializer(request.user).data)

    @extend_schema(request=MeUpdateSerializer, responses={200: MeSerializer})
    def patch(self, request):
        form = MeUpdateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        user = request.user
        if "dm_policy" in form.validated_data:
            user = services.user_set_dm_policy(
                user=user, dm_policy=form.validated_data["dm_policy"]
            )
        return Response(MeSerializer(user).data)

    @extend_schema(request=EraseRequestSerializer, responses={204: None})
    def delete(self, request):
        """Deactivate the account at once (sockets closed, tokens and sessions gone) and
        delete every message it wrote in the background; needs the password."""
        password = request.data.get("password") if hasattr(request.data, "get") else None
        account_erase(user=request.user, actor=request.user, password=password)
        return Response(status=status.HTTP_204_NO_CONTENT)


class BlocksApi(GenericAPIView):
    """GET: the people you block. POST `{"user": id}`: block someone (201; 200 if already)."""

    serializer_class = BlockRequestSerializer
    queryset = User.objects.none()

    @extend_schema(responses=BlockSerializer(many=True))
    def get(self, request):
        blocks = Block.objects.filter(blocker=request.user).select_related("blocked")
        return Response(BlockSerializer(blocks[:BLOCKS_LIMIT], many=True).data)

    @extend_schema(
        request=BlockRequestSerializer, responses={200: BlockSerializer, 201: BlockSerializer}
    )
    def post(self, request):
        form = BlockRequestSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        blocked = User.objects.filter(pk=form.validated_data["user"]).first()
        block, created = services.block_create(blocker=request.user, blocked=blocked)
        return Response(
            BlockSerializer(block).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


class BlockDetailApi(GenericAPIView):
    """DELETE: lift your block of that user (204)."""

    serializer_class = BlockSerializer
    queryset = User.objects.none()

    @extend_schema(request=None, responses={204: None})
    def delete(self, request, user_id):
        services.block_delete(blocker=request.user, blocked_id=user_id)
        return Response(status=status.HTTP_204_NO_CONTENT)
