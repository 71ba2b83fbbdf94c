"""The moderators' workplace: the report queue, each report's review page, and accounts.

The queue lists open reports first. A report's page shows the body as it was reported (kept
even if the author deleted the message since), the room's log around the message (seq −20 …
+5, edits and deletions marked) and one-click actions — delete the message, mute or ban the
author, dismiss — each with a reason, each through the same services as everywhere else, each
resolving the report and recorded in the moderation log with who did it. Every view checks its
permission before it reads anything.
"""

from __future__ import annotations

from datetime import timedelta

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.text import Truncator

from apps.core.errors import ServiceError
from apps.events.models import Event
from apps.messaging.models import Message
from apps.rooms.admin import BAN_DURATIONS, MUTE_DURATIONS, ReasonForm
from apps.users.admin import ModerationAdmin, erase_selected

from . import services
from .managers import QUEUE_ORDER
from .models import Account, Report

CONTEXT_BEFORE, CONTEXT_AFTER = 20, 5
ACTIONS = [
    ("delete", "Delete the message"),
    ("mute", "Mute the author"),
    ("ban", "Ban the author from the room"),
    ("dismiss", "Dismiss the report"),
]


class ResolveForm(forms.Form):
    action = forms.ChoiceField(choices=ACTIONS)
    reason = forms.CharField(
        max_length=500,
        required=False,
        widget=forms.Textarea(attrs={"rows": 2, "cols": 60}),
        help_text="Recorded in the moderation log and the room's events.",
    )
    duration = forms.ChoiceField(
        required=False,
        choices=[("", "Permanent (ban) / choose for a mute")]
        + sorted({*MUTE_DURATIONS, *BAN_DURATIONS[1:]}, key=lambda c: int(c[0])),
        help_text="How long a mute or ban lasts.",
    )

    def until(self):
        seconds = self.cleaned_data.get("duration")
        return timezone.now() + timedelta(seconds=int(seconds)) if seconds else None


def log_context(report) -> list[dict]:
    """The room's log around the reported message, for the review page: each event with what a
    moderator needs to see (edits and deletions marked, redacted bodies said to be so)."""
    events = list(
        Event.objects.filter(
            room_id=report.room_id,
            seq__gte=report.message_seq - CONTEXT_BEFORE,
            seq__lte=report.message_seq + CONTEXT_AFTER,
        )
        .order_by("seq")
        .values_list("seq", "type", "envelope")
    )
    ids = {env["data"].get("id") for _, type, env in events if type.startswith("message.")}
    state = {m.pk: m for m in Message.objects.filter(pk__in=ids).only("edited_at", "deleted_at")}
    rows = []
    for seq, type, env in events:
        data = env.get("data") or {}
        message_id = data.get("id") if type.startswith("message.") else data.get("message")
        message = state.get(message_id)
        body = data.get("body")
        if type in ("message.created", "message.edited"):
            text = "(redacted)" if body is None or data.get("redacted") else body
        elif type.startswith("reaction."):
            text = f"{data.get('emoji')} on message {data.get('message')}"
        elif type == "message.deleted":
            text = f"deleted message {data.get('id')}" + (
                f": {data['reason']}" if data.get("reason") else ""
            )
        else:
            user = (data.get("user") or {}).get("username")
            text = user or ""
        rows.append(
            {
                "seq": seq,
                "type": type,
                "actor": (env.get("actor") or {}).get("username") or "—",
                "ts": env.get("ts"),
                "text": text,
                "message": message_id,
                "reported": message_id == report.message_id and type == "message.created",
                "edited": type == "message.edited"
                or (
                    type == "message.created"
                    and message is not None
                    and message.edited_at is not None
                ),
                "deleted": type == "message.deleted"
                or (type == "message.created" and message is not None and message.is_deleted),
            }
        )
    return rows


@admin.register(Report)
class ReportAdmin(ModerationAdmin):
    """The report queue: open reports first; each opens its review page."""

    list_display = (
        "id",
        "status",
        "category",
        "room",
        "author",
        "excerpt",
        "reporter",
        "created_at",
        "resolved_by",
        "action",
    )
    list_filter = ("status", "category")
    search_fields = ("body", "reason", "author__username", "reporter__username", "room__name")
    list_select_related = ("room", "author", "reporter", "resolved_by")
    review_template = "admin/moderation/report/review.html"

    def get_ordering(self, request):
        return list(QUEUE_ORDER)  # open reports first

    @admin.display(description="body as reported")
    def excerpt(self, report):
        return Truncator(report.body).chars(80) if report.body else "(erased)"

    def change_view(self, request, object_id, form_url="", extra_context=None):
        if not self.has_view_permission(request):
            raise PermissionDenied
        if request.method == "POST" and not self.has_moderate_permission(request):
            raise PermissionDenied
        report = self.get_object(request, object_id)
        if report is None:
            raise Http404("no such report")
        form = ResolveForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            action = form.cleaned_data["action"]
            verb = dict(ACTIONS)[action]
            try:
                services.report_resolve(
                    report=report,
                    actor=request.user,
                    action=action,
                    reason=form.cleaned_data["reason"] or self.default_reason(request, verb),
                    until=form.until(),
                )
            except ServiceError as exc:
                self.message_user(request, f"{verb} refused: {exc.message}", messages.ERROR)
            else:
                self.message_user(
                    request, f"Report #{report.pk}: {verb.lower()} — done.", messages.SUCCESS
                )
                return HttpResponseRedirect(reverse("admin:moderation_report_changelist"))
        context = {
            **self.admin_site.each_context(request),
            "title": f"Report #{report.pk}",
            "opts": self.model._meta,
            "report": report,
            "message": report.message,
            "log": log_context(report),
            "form": form,
            "can_act": report.status == Report.Status.OPEN
            and self.has_moderate_permission(request),
            **(extra_context or {}),
        }
        return TemplateResponse(request, self.review_template, context)


@admin.register(Account)
class AccountAdmin(ModerationAdmin):
    """Accounts, read-only: moderators deactivate one site-wide (its sockets close, 4403)."""

    list_display = ("username", "is_active", "is_staff", "date_joined", "last_login")
    list_filter = ("is_active", "is_staff")
    search_fields = ("username",)
    fields = ("username", "is_active", "is_staff", "date_joined", "last_login")
    readonly_fields = fields
    actions = ["deactivate_accounts", "erase_accounts"]

    @admin.action(description="Deactivate the account site-wide", permissions=["moderate"])
    def deactivate_accounts(self, request, queryset):
        verb = "Deactivate"
        return self.run_action(
            request,
            queryset,
            verb=verb,
            form_class=ReasonForm,
            call=lambda user, form: services.user_deactivate(
                user=user, actor=request.user, reason=self.reason(request, form, verb)
            ),
        )

    @admin.action(
        description="Erase account (deletes every message; cannot be undone)",
        permissions=["moderate"],
    )
    def erase_accounts(self, request, queryset):
        """apps.messaging.erasure: refused for staff accounts unless a superuser asks."""
        return erase_selected(self, request, queryset)
