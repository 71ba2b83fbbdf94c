"""REST for reports: a member reports a message; moderators list and handle the reports of the
rooms they moderate (site moderators also in the admin's report queue)."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.generics import GenericAPIView
from rest_framework.response import Response

from apps.core.api import LIMIT, ErrorSerializer, int_param, limit_param, next_url, validated
from apps.core.errors import invalid, not_found
from apps.messaging.api import MESSAGE_REFUSED, MessageScopedApi
from apps.rooms.api import REFUSED
from apps.users.api import UserSerializer

from . import services
from .models import Report

REPORTS_PAGE = (50, 200)


class ReportRequestSerializer(serializers.Serializer):
    category = serializers.ChoiceField(choices=Report.Category.choices)
    reason = serializers.CharField(
        max_length=services.REASON_MAX, required=False, allow_blank=True, default=""
    )


class ReportCreatedSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    status = serializers.ChoiceField(choices=Report.Status.choices)


class ReportSerializer(serializers.ModelSerializer):
    """A report as the room's moderators see it (with the reporter and the body as reported)."""

    reporter = UserSerializer(allow_null=True)
    author = UserSerializer(allow_null=True)
    resolved_by = UserSerializer(allow_null=True)
    message = serializers.IntegerField(source="message_id", allow_null=True)
    room = serializers.IntegerField(source="room_id")
    seq = serializers.IntegerField(source="message_seq")

    class Meta:
        model = Report
        fields = [
            "id",
            "status",
            "category",
            "reason",
            "message",
            "room",
            "seq",
            "author",
            "body",
            "reporter",
            "created_at",
            "resolved_by",
            "resolved_at",
            "action",
            "resolution_reason",
        ]


class ReportPageSerializer(serializers.Serializer):
    results = ReportSerializer(many=True)
    next = serializers.CharField(allow_null=True)


class MessageReportApi(MessageScopedApi):
    """Report a message you can read (one open report per message and reporter)."""

    rate_budget = "report"  # apps.users.ratelimit: reports have a small budget of their own
    serializer_class = ReportRequestSerializer

    @extend_schema(
        request=ReportRequestSerializer,
        responses={
            201: ReportCreatedSerializer,
            200: OpenApiResponse(
                ReportCreatedSerializer, description="Already reported: the open report"
            ),
            429: ErrorSerializer,
            **MESSAGE_REFUSED,
        },
    )
    def post(self, request, message_id):
        data = validated(ReportRequestSerializer, request)
        report, created = services.report_create(
            message=self.message,
            reporter=request.user,
            category=data["category"],
            reason=data["reason"],
        )
        return Response(
            {"id": report.pk, "status": report.status},
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


class ReportsApi(GenericAPIView):
    """Reports of the rooms you moderate (every room for site moderators), newest first;
    empty for everyone else."""

    serializer_class = ReportSerializer
    queryset = Report.objects.none()

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "status",
                str,
                enum=Report.Status.values,
                description="Only reports in this state (open, resolved, dismissed)",
            ),
            OpenApiParameter("room", int, description="Only this room's reports"),
            OpenApiParameter("before", int, description="Cursor: reports with id < before"),
            LIMIT,
        ],
        responses={200: ReportPageSerializer},
    )
    def get(self, request):
        limit = limit_param(request, REPORTS_PAGE)
        before = int_param(request, "before", default=None, minimum=1)
        room = int_param(request, "room", default=None, minimum=1)
        state = request.query_params.get("status")
        reports = Report.objects.moderated_by(request.user)
        if state is not None:
            if state not in Report.Status.values:
                raise invalid("status must be one of: " + ", ".join(Report.Status.values))
            reports = reports.filter(status=state)
        if room is not None:
            reports = reports.filter(room_id=room)
        if before is not None:
            reports = reports.filter(pk__lt=before)
        page = list(
            reports.select_related("reporter", "author", "resolved_by").order_by("-pk")[: limit + 1]
        )
        more = len(page) > limit
        page = page[:limit]
        return Response(
            {
                "results": ReportSerializer(page, many=True).data,
                "next": next_url(request, before=page[-1].pk, limit=limit) if more else None,
            }
        )


class ReportResolveSerializer(serializers.Serializer):
    action = serializers.ChoiceField(choices=["delete", "mute", "ban", "dismiss"])
    reason = serializers.CharField(
        max_length=services.RESOLUTION_REASON_MAX, required=False, allow_blank=True, default=""
    )
    until = serializers.DateTimeField(required=False, allow_null=True, default=None)


class ReportResolveApi(GenericAPIView):
    """Handle an open report of a room you moderate: delete the message, mute or ban its
    author (`until`; a mute needs one), or dismiss it — through the same services as anywhere."""

    serializer_class = ReportResolveSerializer
    queryset = Report.objects.none()

    @extend_schema(
        request=ReportResolveSerializer,
        responses={
            200: ReportSerializer,
            **REFUSED,
            404: OpenApiResponse(ErrorSerializer, description="No such report"),
        },
    )
    def post(self, request, report_id):
        report = Report.objects.moderated_by(request.user).filter(pk=report_id).first()
        if report is None:
            raise not_found("report not found")
        data = validated(ReportResolveSerializer, request)
        report = services.report_resolve(
            report=report,
            actor=request.user,
            action=data["action"],
            reason=data["reason"],
            until=data["until"],
        )
        report = Report.objects.select_related("reporter", "author", "resolved_by").get(
            pk=report.pk
        )
        return Response(ReportSerializer(report).data)
