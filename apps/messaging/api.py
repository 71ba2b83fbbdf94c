"""REST for messages and reactions: the same services as the WebSocket, so writes fan out live.

Writes answer with the committed event's envelope (what a WebSocket `ack` carries).
"""

from __future__ import annotations

import uuid

from django.core.handlers.asgi import ASGIRequest
from django.db.models import Prefetch
from django.http import StreamingHttpResponse
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.generics import GenericAPIView
from rest_framework.response import Response
from rest_framework.utils.urls import remove_query_param

from apps.core.api import LIMIT, ErrorSerializer, int_param, limit_param, next_url, validated
from apps.core.errors import invalid
from apps.rooms.api import NOT_FOUND, REFUSED, RoomScopedApi
from apps.rooms.serializers import EnvelopeSerializer
from apps.users.throttles import ExportThrottle

from . import export, services
from .models import Message, Reaction
from .serializers import (
    EmojiSerializer,
    MessageEditSerializer,
    MessagePageSerializer,
    MessageSendSerializer,
    MessageSerializer,
)

MESSAGES_PAGE = (50, 200)
MESSAGE_NOT_FOUND = {
    404: OpenApiResponse(ErrorSerializer, description="No such message, or not visible")
}
MESSAGE_REFUSED = {**REFUSED, **MESSAGE_NOT_FOUND}


def with_reactions(messages):
    return messages.select_related("author").prefetch_related(
        Prefetch(
            "reactions",
            queryset=Reaction.objects.only("id", "message_id", "user_id", "emoji", "created_at"),
        ),
        "attachments",
    )


class RoomMessagesApi(RoomScopedApi):
    """GET: the room's messages, newest first, paged back by seq. POST: send a message."""

    serializer_class = MessageSendSerializer

    @extend_schema(
        parameters=[
            OpenApiParameter("before", int, description="Cursor: messages with seq < before"),
            OpenApiParameter(
                "around",
                int,
                description="The messages around this seq (a "
                "search hit): limit/2 older ones, it and the newer ones",
            ),
            LIMIT,
        ],
        responses={200: MessagePageSerializer, **NOT_FOUND},
    )
    def get(self, request, room_id):
        limit = limit_param(request, MESSAGES_PAGE)
        before = int_param(request, "before", default=None, minimum=1)
        around = int_param(request, "around", default=None, minimum=1, maximum=2**63 - 1)
        if around is not None:
            if before is not None:
                raise invalid("give either before or around")
            return self.around(request, around, limit)
        messages = Message.objects.in_room(self.room).before(before).newest_first()
        page = list(with_reactions(messages)[: limit + 1])
        more = len(page) > limit
        page = page[:limit]
        return Response(
            {
                "results": MessageSerializer(page, many=True, context={"user": request.user}).data,
                "next": next_url(request, before=page[-1].seq, limit=limit) if more else None,
            }
        )

    def around(self, request, seq, limit):
        """Newest first like every page: the newer half (seq itself included) and the older
        half; `next` pages on back from the oldest, as from a `before` page."""
        older_count = limit // 2
        room = Message.objects.in_room(self.room)
        newer = list(
            with_reactions(room.filter(seq__gte=seq).order_by("seq"))[: limit - older_count]
        )
        older = list(with_reactions(room.before(seq).newest_first())[: older_count + 1])
        more = len(older) > older_count
        page = newer[::-1] + older[:older_count]
        return Response(
            {
                "results": MessageSerializer(page, many=True, context={"user": request.user}).data,
                "next": (
                    remove_query_param(
                        next_url(request, before=page[-1].seq, limit=limit), "around"
                    )
                    if more
                    else None
                ),
            }
        )

    @extend_schema(
        request=MessageSendSerializer,
        responses={
            201: OpenApiResponse(EnvelopeSerializer, description="The message.created event"),
            200: OpenApiResponse(EnvelopeSerializer, description="Resend: the original event"),
            413: ErrorSerializer,
            429: ErrorSerializer,
            **REFUSED,
        },
    )
    def post(self, request, room_id):
        data = validated(MessageSendSerializer, request)
        client_id = data.get("client_id") or uuid.uuid4()
        resend = Message.objects.filter(author=request.user, client_id=client_id).exists()
        event = services.message_send(
            room=self.room,
            author=request.user,
            body=data["body"],
            client_id=client_id,
            reply_to=data.get("reply_to"),
            attachments=data.get("attachments"),
        )
        code = status.HTTP_200_OK if resend else status.HTTP_201_CREATED
        return Response(event.envelope, status=code)


class MessageScopedApi(GenericAPIView):
    """Base: `self.message` is resolved (and its room's visibility checked) first."""

    queryset = Message.objects.none()

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        self.message = services.get_message_or_404(kwargs["message_id"], request.user)


class MessageDetailApi(MessageScopedApi):
    """One message. PATCH edits it (author); DELETE deletes it (author, or a moderator)."""

    serializer_class = MessageEditSerializer

    @extend_schema(responses={200: MessageSerializer, **MESSAGE_NOT_FOUND})
    def get(self, request, message_id):
        message = with_reactions(Message.objects.filter(pk=self.message.pk)).get()
        return Response(MessageSerializer(message, context={"user": request.user}).data)

    @extend_schema(
        request=MessageEditSerializer,
        responses={
            200: OpenApiResponse(EnvelopeSerializer, description="message.edited"),
            413: ErrorSerializer,
            **MESSAGE_REFUSED,
        },
    )
    def patch(self, request, message_id):
        body = validated(MessageEditSerializer, request)["body"]
        event = services.message_edit(message=self.message, actor=request.user, body=body)
        return Response(event.envelope)

    @extend_schema(
        parameters=[OpenApiParameter("reason", str, description="Moderators: why (audit trail)")],
        request=None,
        responses={
            200: OpenApiResponse(EnvelopeSerializer, description="message.deleted"),
            **MESSAGE_REFUSED,
        },
    )
    def delete(self, request, message_id):
        reason = request.query_params.get("reason", "")[:500]
        event = services.message_delete(message=self.message, actor=request.user, reason=reason)
        return Response(event.envelope)


class MessageReactionsApi(MessageScopedApi):
    """POST adds the caller's reaction; DELETE takes it back (emoji in the body or ?emoji=)."""

    serializer_class = EmojiSerializer

    @extend_schema(
        request=EmojiSerializer,
        responses={
            201: OpenApiResponse(EnvelopeSerializer, description="reaction.added"),
            **MESSAGE_REFUSED,
        },
    )
    def post(self, request, message_id):
        emoji = validated(EmojiSerializer, request)["emoji"]
        event = services.reaction_add(message=self.message, user=request.user, emoji=emoji)
        return Response(event.envelope, status=status.HTTP_201_CREATED)

    @extend_schema(
        parameters=[OpenApiParameter("emoji", str, description="Instead of a body")],
        request=EmojiSerializer,
        responses={
            200: OpenApiResponse(EnvelopeSerializer, description="reaction.removed"),
            **MESSAGE_REFUSED,
        },
    )
    def delete(self, request, message_id):
        emoji = request.query_params.get("emoji")
        if emoji is None:
            if not request.data:
                raise invalid("emoji is required (in the body or as ?emoji=)")
            emoji = validated(EmojiSerializer, request)["emoji"]
        event = services.reaction_remove(message=self.message, user=request.user, emoji=emoji)
        return Response(event.envelope)


class MeExportApi(GenericAPIView):
    """Download the caller's own data as JSON Lines (PROTOCOL §6): one object a line with a
    `kind` (account, membership, message, reaction, notification, block). Streamed. A
    message's attachments link to the download view by full address."""

    serializer_class = None
    queryset = Message.objects.none()
    throttle_classes = [ExportThrottle]

    @extend_schema(
        responses={
            (200, export.CONTENT_TYPE): OpenApiResponse(
                str, description="JSON Lines: one object a line, each with a `kind`"
            )
        },
    )
    def get(self, request):
        user = request.user
        # Under ASGI a sync iterator would be read whole before the first byte goes out.
        is_asgi = isinstance(request._request, ASGIRequest)
        make_lines = export.aexport_lines if is_asgi else export.export_lines
        lines = make_lines(user, request.build_absolute_uri)
        response = StreamingHttpResponse(lines, content_type=export.CONTENT_TYPE)
        stamp = timezone.now().strftime("%Y%m%d")
        response["Content-Disposition"] = (
            f'attachment; filename="{user.username}-export-{stamp}.jsonl"'
        )
        response["Cache-Control"] = "no-store"
        return response
