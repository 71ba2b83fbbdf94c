"""REST for rooms, memberships, moderation and the room event log (PROTOCOL §4).

Views validate input, call a service, serialize the result. Every room-scoped view resolves
the room first with `get_room_or_404`, so a private room is a 404 to non-members, exactly like
a room that does not exist, before any other validation runs.

About 400 lines of thin views, one per endpoint of the rooms API (rooms, members and their
moderation, the event log, read receipts): one job, kept together as the URL table is.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import serializers, status
from rest_framework.generics import GenericAPIView
from rest_framework.response import Response

from apps.core.api import (
    LIMIT,
    ErrorSerializer,
    bool_param,
    int_param,
    limit_param,
    next_url,
    validated,
)
from apps.core.errors import forbidden, not_found
from apps.events.models import Event
from apps.messaging.models import Message
from apps.notifications.models import Notification, RoomLevel

from . import services
from .models import Membership, Room
from .serializers import (
    BanSerializer,
    EventPageSerializer,
    MemberPageSerializer,
    MemberSerializer,
    MuteSerializer,
    ReadResultSerializer,
    ReadSerializer,
    ReasonSerializer,
    RoleSerializer,
    RoomCreateSerializer,
    RoomPageSerializer,
    RoomSerializer,
    RoomUpdateSerializer,
    UserRefSerializer,
)

User = get_user_model()
ROOMS_PAGE = (50, 200)  # default and maximum limit
MEMBERS_PAGE = (200, 1000)
EVENTS_PAGE = (100, 1000)
NOT_FOUND = {404: OpenApiResponse(ErrorSerializer, description="No such room, or not visible")}
REFUSED = {
    400: ErrorSerializer,
    403: OpenApiResponse(ErrorSerializer, description="Not allowed (role, ban, mute, archived)"),
    **NOT_FOUND,
}


def get_user_or_404(user_id) -> User:
    user = User.objects.filter(pk=user_id, is_active=True).first()
    if user is None:
        raise not_found("user not found")
    return user


def seen_by(rooms, user):
    """`rooms` as `user` sees them (what RoomSerializer shows): their membership, the unread
    and mentions counts and the notification level."""
    return rooms.with_membership_of(user).annotate(
        unread=Message.objects.unread_count(user),
        mentions=Notification.objects.unread_mentions_count(user),
        my_notify=RoomLevel.objects.level_of(user),
    )


def room_data(room, user) -> dict:
    """The room as `user` sees it (membership and unread count included)."""
    return RoomSerializer(seen_by(Room.objects, user).get(pk=room.pk)).data


class RoomScopedApi(GenericAPIView):
    """Base: `self.room` is resolved before any handler runs, under the read rule
    (`check_can_read`: a ban holds on every room-scoped endpoint, reads and writes), or only
    the view rule for the methods in `view_only` (the room object itself)."""

    queryset = Room.objects.none()
    view_only: tuple[str, ...] = ()

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        self.room = services.get_room_or_404(kwargs["room_id"], request.user)
        if request.method not in self.view_only:
            services.check_can_read(self.room, request.user)


# --- Rooms -------------------------------------------------------------------------------------


class RoomsApi(GenericAPIView):
    """Rooms the caller may see (public rooms and their own), and creating rooms."""

    rate_budget = {"POST": "room_create"}  # apps.users.ratelimit

    serializer_class = RoomCreateSerializer
    queryset = Room.objects.none()

    @extend_schema(
        operation_id="rooms_list",
        parameters=[
            OpenApiParameter("joined", bool, description="Only rooms the caller belongs to"),
            OpenApiParameter("search", str, description="Part of the room name"),
            OpenApiParameter("after", int, description="Cursor: rooms with a larger id"),
            LIMIT,
        ],
        responses=RoomPageSerializer,
    )
    def get(self, request):
        limit = limit_param(request, ROOMS_PAGE)
        after = int_param(request, "after", default=0)
        rooms = Room.objects.visible_to(request.user)
        if bool_param(request, "joined"):
            rooms = rooms.joined_by(request.user)
        search = request.query_params.get("search", "").strip()
        if search:
            rooms = rooms.filter(name__icontains=search[:100])
        page = list(seen_by(rooms, request.user).filter(pk__gt=after).order_by("pk")[: limit + 1])
        more = len(page) > limit
        page = page[:limit]
        return Response(
            {
                "results": RoomSerializer(page, many=True).data,
                "next": next_url(request, after=page[-1].pk, limit=limit) if more else None,
            }
        )

    @extend_schema(
        request=RoomCreateSerializer, responses={201: RoomSerializer, 400: ErrorSerializer}
    )
    def post(self, request):
        data = validated(RoomCreateSerializer, request)
        room = services.room_create(
            creator=request.user,
            name=data["name"],
            kind=data["kind"],
            topic=data["topic"],
            member_ids=data["members"],
        )
        return Response(room_data(room, request.user), status=status.HTTP_201_CREATED)


class DirectRoomApi(GenericAPIView):
    """Open (or find) the direct room with another person."""

    rate_budget = "dm_open"

    serializer_class = UserRefSerializer
    queryset = Room.objects.none()

    @extend_schema(
        request=UserRefSerializer,
        responses={
            200: RoomSerializer,
            201: RoomSerializer,
            400: ErrorSerializer,
            404: ErrorSerializer,
        },
    )
    def post(self, request):
        other = get_user_or_404(validated(UserRefSerializer, request)["user"])
        existed = Room.objects.filter(
            direct_key=":".join(map(str, sorted([request.user.pk, other.pk])))
        ).exists()
        room = services.direct_room_open(user=request.user, other=other)
        code = status.HTTP_200_OK if existed else status.HTTP_201_CREATED
        return Response(room_data(room, request.user), status=code)


class RoomDetailApi(RoomScopedApi):
    """One room. PATCH renames it or changes the topic; DELETE archives it (read-only for good)."""

    serializer_class = RoomUpdateSerializer
    view_only = ("GET",)

    @extend_schema(responses={200: RoomSerializer, **NOT_FOUND})
    def get(self, request, room_id):
        return Response(room_data(self.room, request.user))

    @extend_schema(request=RoomUpdateSerializer, responses={200: RoomSerializer, **REFUSED})
    def patch(self, request, room_id):
        data = validated(RoomUpdateSerializer, request, partial=True)
        room = services.room_update(
            room=self.room,
            actor=request.user,
            name=data.get("name"),
            topic=data.get("topic"),
            slow_mode_seconds=data.get("slow_mode_seconds"),
            post_policy=data.get("post_policy"),
            retention_days=data.get("retention_days", services.UNCHANGED),
        )
        return Response(room_data(room, request.user))

    @extend_schema(request=None, responses={200: RoomSerializer, **REFUSED})
    def delete(self, request, room_id):
        room = services.room_archive(room=self.room, actor=request.user)
        return Response(room_data(room, request.user))


class RoomJoinApi(RoomScopedApi):
    """Join a public room (private rooms need an invitation; a ban keeps you out)."""

    serializer_class = serializers.Serializer

    @extend_schema(request=None, responses={200: RoomSerializer, **REFUSED})
    def post(self, request, room_id):
        services.room_join(room=self.room, user=request.user)
        return Response(room_data(self.room, request.user))


class RoomLeaveApi(RoomScopedApi):
    """Leave a room (not a direct room)."""

    serializer_class = serializers.Serializer

    @extend_schema(request=None, responses={204: None, **REFUSED})
    def post(self, request, room_id):
        services.room_leave(room=self.room, user=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class RoomInviteApi(RoomScopedApi):
    """Add someone to the room (owner and moderators)."""

    rate_budget = "invite"

    serializer_class = UserRefSerializer

    @extend_schema(request=UserRefSerializer, responses={200: MemberSerializer, **REFUSED})
    def post(self, request, room_id):
        user = get_user_or_404(validated(UserRefSerializer, request)["user"])
        membership = services.room_invite(room=self.room, actor=request.user, user=user)
        return Response(MemberSerializer(membership).data)


class RoomReadApi(RoomScopedApi):
    """Mark the room read up to a seq (never moves back); sends receipt.updated to your sockets."""

    rate_budget = "read"  # receipts: their own bucket, not the write bucket

    serializer_class = ReadSerializer

    @extend_schema(request=ReadSerializer, responses={200: ReadResultSerializer, **REFUSED})
    def post(self, request, room_id):
        seq = validated(ReadSerializer, request)["seq"]
        services.mark_read(room=self.room, user=request.user, seq=seq)
        room = seen_by(Room.objects, request.user).get(pk=self.room.pk)
        return Response({"last_read_seq": room.my_last_read_seq or 0, "unread": room.unread})


# --- Members and moderation --------------------------------------------------------------------


class MembersApi(RoomScopedApi):
    """The room's current members; `?banned=true` lists bans instead (moderators only).

    Read positions, mutes and bans are shown only to the member themself and to moderators;
    others see `user`, `role` and `joined_at`."""

    serializer_class = MemberSerializer

    @extend_schema(
        parameters=[
            OpenApiParameter("banned", bool, description="List banned users (moderators)"),
            OpenApiParameter("after", int, description="Cursor: users with a larger id"),
            LIMIT,
        ],
        responses={200: MemberPageSerializer, **NOT_FOUND},
    )
    def get(self, request, room_id):
        limit = limit_param(request, MEMBERS_PAGE)
        after = int_param(request, "after", default=0)
        members = Membership.objects.in_room(self.room).select_related("user")
        moderator = services.can_moderate(self.room, request.user)
        if bool_param(request, "banned"):
            if not moderator:
                raise forbidden("only the room's owner or moderators may see bans")
            members = members.banned()
        else:
            members = members.active()
        page = list(members.filter(user_id__gt=after).order_by("user_id")[: limit + 1])
        more = len(page) > limit
        page = page[:limit]
        return Response(
            {
                "results": MemberSerializer(
                    page, many=True, context={"full": moderator, "full_for": request.user.pk}
                ).data,
                "next": next_url(request, after=page[-1].user_id, limit=limit) if more else None,
            }
        )


class MemberActionApi(RoomScopedApi):
    """Base of the moderation actions on one member: resolves the target, runs `perform`.

    `perform(data)` calls the service; it returns the membership (200) or None (204).
    """

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        self.target = get_user_or_404(kwargs["user_id"])

    def perform(self, data):
        raise NotImplementedError

    def post(self, request, room_id, user_id):
        membership = self.perform(validated(self.serializer_class, request))
        if membership is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        return Response(MemberSerializer(membership).data)

    def act(self, service, **kwargs):
        return service(room=self.room, actor=self.request.user, user=self.target, **kwargs)


def member_action_schema(serializer, *, no_content=False):
    return extend_schema_view(
        post=extend_schema(
            request=serializer,
            responses={204: None, **REFUSED} if no_content else {200: MemberSerializer, **REFUSED},
        )
    )


@member_action_schema(BanSerializer)
class MemberBanApi(MemberActionApi):
    """Ban a user (optionally until a time): removed at once, cannot rejoin."""

    serializer_class = BanSerializer

    def perform(self, data):
        return self.act(services.member_ban, reason=data["reason"], until=data["until"])


@member_action_schema(ReasonSerializer)
class MemberUnbanApi(MemberActionApi):
    """Lift a ban."""

    serializer_class = ReasonSerializer

    def perform(self, data):
        return self.act(services.member_unban, reason=data["reason"])


@member_action_schema(MuteSerializer)
class MemberMuteApi(MemberActionApi):
    """Mute a member until a time (`until: null` lifts the mute)."""

    serializer_class = MuteSerializer

    def perform(self, data):
        return self.act(services.member_mute, until=data["until"], reason=data["reason"])


@member_action_schema(ReasonSerializer, no_content=True)
class MemberKickApi(MemberActionApi):
    """Remove a member (they may join a public room again)."""

    serializer_class = ReasonSerializer

    def perform(self, data):
        self.act(services.member_kick, reason=data["reason"])


@member_action_schema(RoleSerializer)
class MemberRoleApi(MemberActionApi):
    """Make a member a moderator, or a member again (the owner, or site moderators)."""

    serializer_class = RoleSerializer

    def perform(self, data):
        return self.act(services.member_set_role, role=data["role"])


# --- The room event log ------------------------------------------------------------------------


class RoomEventsApi(RoomScopedApi):
    """The room's event log after `since`, oldest first: envelopes exactly as stored and sent.

    A `since` below `history_start` (events removed by retention) is not an error: the page
    starts at history_start."""

    serializer_class = EventPageSerializer

    @extend_schema(
        parameters=[OpenApiParameter("since", int, description="Events with seq > since"), LIMIT],
        responses={200: EventPageSerializer, **NOT_FOUND},
    )
    def get(self, request, room_id):
        since = int_param(request, "since", default=0)
        limit = limit_param(request, EVENTS_PAGE)
        rows = list(
            Event.objects.in_room(self.room)
            .sequenced()
            .since(since)
            .values_list("seq", "envelope")[: limit + 1]
        )
        more = len(rows) > limit
        rows = rows[:limit]
        last_seq, history_start = Room.objects.values_list("last_seq", "history_start").get(
            pk=self.room.pk
        )
        return Response(
            {
                "results": [envelope for _, envelope in rows],
                "next": next_url(request, since=rows[-1][0], limit=limit) if more else None,
                "last_seq": last_seq,
                "history_start": history_start,
            }
        )
