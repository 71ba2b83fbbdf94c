"""REST for message search and threads (PROTOCOL §8)."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db.models import Count, IntegerField, OuterRef, Subquery, Value
from django.db.models.functions import Coalesce
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.generics import GenericAPIView
from rest_framework.response import Response

from apps.core.api import LIMIT, ErrorSerializer, int_param, limit_param, next_url, validated
from apps.core.errors import invalid
from apps.rooms.models import Room

from . import search
from .api import MESSAGE_NOT_FOUND, MessageScopedApi, with_reactions
from .models import Message, ThreadFollow
from .serializers import MessageSerializer

MAX_ID = 2**63 - 1  # ids, seqs and cursors are bigint: larger is `invalid`, not a database error
SEARCH_PAGE = (20, 100)
THREAD_PAGE = (50, 200)
THREADS_PAGE = (50, 200)


class SearchHitSerializer(serializers.Serializer):
    room = serializers.IntegerField()
    seq = serializers.IntegerField()
    message = MessageSerializer()
    highlight = serializers.CharField(
        help_text="The matching part of the body, HTML-escaped, matches in <mark>…</mark>."
    )


class SearchPageSerializer(serializers.Serializer):
    results = SearchHitSerializer(many=True)
    next = serializers.CharField(allow_null=True, help_text="URL of the next (older) page.")


def author_param(request) -> int | None:
    """`author`: a user id, or a username (a username that names nobody matches nothing)."""
    raw = request.query_params.get("author", "")
    if raw == "":
        return None
    if raw.isdigit():
        return int_param(request, "author", minimum=1, maximum=MAX_ID)
    if len(raw) > 150 or "\x00" in raw:
        raise invalid("author must be a user id or a username")
    user = get_user_model().objects.filter(username__iexact=raw).only("pk").first()
    return user.pk if user is not None else 0


class SearchApi(GenericAPIView):
    """Messages the caller may read whose text matches `q` (words, "phrases", `or`, `-word`),
    newest first. Never deleted (redacted) messages, nor those past their room's retention."""

    queryset = Message.objects.none()
    serializer_class = SearchPageSerializer

    @extend_schema(
        parameters=[
            OpenApiParameter("q", str, required=True, description='Words, "phrases", or, -word'),
            OpenApiParameter("room", int, description="Only this room"),
            OpenApiParameter("author", str, description="Only this author (id or username)"),
            OpenApiParameter("before", int, description="Cursor: messages with a smaller id"),
            LIMIT,
        ],
        responses={200: SearchPageSerializer, 400: ErrorSerializer},
    )
    def get(self, request):
        limit = limit_param(request, SEARCH_PAGE)
        page = search.search_messages(
            request.user,
            request.query_params.get("q", ""),
            room_id=int_param(request, "room", minimum=1, maximum=MAX_ID),
            author_id=author_param(request),
            before=int_param(request, "before", minimum=1, maximum=MAX_ID),
            limit=limit,
            prepare=with_reactions,
        )
        messages = MessageSerializer(page.messages, many=True, context={"user": request.user}).data
        return Response(
            {
                "results": [
                    {"room": m.room_id, "seq": m.seq, "message": data, "highlight": m.highlight}
                    for m, data in zip(page.messages, messages, strict=True)
                ],
                "next": (
                    next_url(request, before=page.messages[-1].pk, limit=limit)
                    if page.more
                    else None
                ),
            }
        )


class ThreadPageSerializer(serializers.Serializer):
    root = MessageSerializer()
    results = MessageSerializer(many=True)
    next = serializers.CharField(allow_null=True, help_text="URL of the next (newer) page.")


def root_of(message) -> Message:
    """The thread a message belongs to: its root (itself when it has no thread)."""
    return message if message.thread_id is None else Message.objects.get(pk=message.thread_id)


class ThreadApi(MessageScopedApi):
    """A thread's replies, oldest first, paged forward by seq (`id` may be the root or any
    of its replies). Deleted replies keep their place, without a body."""

    serializer_class = ThreadPageSerializer

    @extend_schema(
        parameters=[
            OpenApiParameter("after", int, description="Cursor: replies with seq > after"),
            LIMIT,
        ],
        responses={200: ThreadPageSerializer, 400: ErrorSerializer, **MESSAGE_NOT_FOUND},
    )
    def get(self, request, message_id):
        limit = limit_param(request, THREAD_PAGE)
        after = int_param(request, "after", default=0, maximum=MAX_ID)
        root = with_reactions(Message.objects.filter(pk=root_of(self.message).pk)).get()
        replies = Message.objects.filter(thread_id=root.pk, seq__gt=after).order_by("seq")
        page = list(with_reactions(replies)[: limit + 1])
        more, page = len(page) > limit, page[:limit]
        context = {"user": request.user}
        return Response(
            {
                "root": MessageSerializer(root, context=context).data,
                "results": MessageSerializer(page, many=True, context=context).data,
                "next": next_url(request, after=page[-1].seq, limit=limit) if more else None,
            }
        )


class FollowSerializer(serializers.Serializer):
    root = serializers.IntegerField()
    following = serializers.BooleanField()
    last_read_seq = serializers.IntegerField()
    unread = serializers.IntegerField()


def follow_state(root, user) -> dict:
    follow = ThreadFollow.objects.filter(root=root, user=user).first()
    last_read = follow.last_read_seq if follow else 0
    return {
        "root": root.pk,
        "following": bool(follow and follow.following),
        "last_read_seq": last_read,
        "unread": unread_replies(root.pk, user, last_read),
    }


def unread_replies(root_id, user, last_read_seq) -> int:
    return (
        Message.objects.filter(thread_id=root_id, seq__gt=last_read_seq, deleted_at__isnull=True)
        .exclude(author=user)
        .count()
    )


class FollowApi(MessageScopedApi):
    """POST: follow the message's thread (from now on: replies so far count as read).
    DELETE: stop following it (kept: your own replies follow it again)."""

    serializer_class = FollowSerializer

    @extend_schema(request=None, responses={200: FollowSerializer, **MESSAGE_NOT_FOUND})
    def post(self, request, message_id):
        root = root_of(self.message)
        follow, created = ThreadFollow.objects.get_or_create(
            root=root, user=request.user, defaults={"last_read_seq": root.last_reply_seq or 0}
        )
        if not created and not follow.following:
            follow.following = True
            follow.save(update_fields=["following"])
        return Response(follow_state(root, request.user))

    @extend_schema(request=None, responses={200: FollowSerializer, **MESSAGE_NOT_FOUND})
    def delete(self, request, message_id):
        root = root_of(self.message)
        ThreadFollow.objects.update_or_create(
            root=root, user=request.user, defaults={"following": False}
        )
        return Response(follow_state(root, request.user))


class ThreadReadSerializer(serializers.Serializer):
    seq = serializers.IntegerField(
        required=False,
        min_value=0,
        max_value=MAX_ID,
        help_text="Read up to this reply (default: the newest).",
    )


class ThreadReadApi(MessageScopedApi):
    """Mark the thread read up to a reply's seq (never moves back)."""

    rate_budget = "read"
    serializer_class = ThreadReadSerializer

    @extend_schema(
        request=ThreadReadSerializer,
        responses={200: FollowSerializer, 400: ErrorSerializer, **MESSAGE_NOT_FOUND},
    )
    def post(self, request, message_id):
        root = root_of(self.message)
        seq = validated(ThreadReadSerializer, request).get("seq")
        newest = root.last_reply_seq or 0
        seq = newest if seq is None else min(seq, newest)
        follow = ThreadFollow.objects.filter(root=root, user=request.user).first()
        if follow is not None and seq > follow.last_read_seq:
            follow.last_read_seq = seq
            follow.save(update_fields=["last_read_seq"])
        return Response(follow_state(root, request.user))


class FollowedThreadSerializer(serializers.Serializer):
    root = MessageSerializer()
    room = serializers.IntegerField()
    reply_count = serializers.IntegerField()
    last_reply_seq = serializers.IntegerField(allow_null=True)
    last_read_seq = serializers.IntegerField()
    unread = serializers.IntegerField(help_text="Live replies of others after last_read_seq.")


class ThreadsPageSerializer(serializers.Serializer):
    results = FollowedThreadSerializer(many=True)
    next = serializers.CharField(allow_null=True)


class ThreadsApi(GenericAPIView):
    """The threads the caller follows in rooms they may read, latest reply first."""

    queryset = ThreadFollow.objects.none()
    serializer_class = ThreadsPageSerializer

    @extend_schema(
        parameters=[
            OpenApiParameter("before", int, description="Cursor (the `next` link's)"),
            LIMIT,
        ],
        responses={200: ThreadsPageSerializer, 400: ErrorSerializer},
    )
    def get(self, request):
        user = request.user
        limit = limit_param(request, THREADS_PAGE)
        before = int_param(request, "before", minimum=1, maximum=MAX_ID)
        latest = Message.objects.filter(thread=OuterRef("root")).order_by("-seq").values("pk")[:1]
        unread = (
            Message.objects.filter(
                thread=OuterRef("root"), deleted_at__isnull=True, seq__gt=OuterRef("last_read_seq")
            )
            .exclude(author=user)
            .order_by()
            .values("thread")
            .annotate(n=Count("pk"))
            .values("n")
        )
        follows = ThreadFollow.objects.filter(
            user=user, following=True, root__room__in=Room.objects.readable_by(user)
        ).annotate(
            latest=Coalesce(Subquery(latest), "root_id"),
            unread=Coalesce(Subquery(unread, output_field=IntegerField()), Value(0)),
        )
        if before is not None:
            follows = follows.filter(latest__lt=before)
        page = list(follows.order_by("-latest")[: limit + 1])
        more, page = len(page) > limit, page[:limit]
        roots = {
            m.pk: m
            for m in with_reactions(Message.objects.filter(pk__in=[f.root_id for f in page]))
        }
        context = {"user": user}
        return Response(
            {
                "results": [
                    {
                        "root": MessageSerializer(roots[f.root_id], context=context).data,
                        "room": roots[f.root_id].room_id,
                        "reply_count": roots[f.root_id].reply_count,
                        "last_reply_seq": roots[f.root_id].last_reply_seq,
                        "last_read_seq": f.last_read_seq,
                        "unread": f.unread,
                    }
                    for f in page
                ],
                "next": next_url(request, before=page[-1].latest, limit=limit) if more else None,
            }
        )
