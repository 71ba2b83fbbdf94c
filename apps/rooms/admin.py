"""The moderators' admin: read-only views; every change is an action that calls a service.

So a ban or a deletion made here is the same as one made over the API or the WebSocket: one
transaction, its permission check, the event in the room log, live fan-out after commit. Actions
need `rooms.moderate_room` (the Moderators group); other staff see no actions and, should they
post one anyway, the service refuses it.
"""

from __future__ import annotations

from datetime import timedelta

from django import forms
from django.contrib import admin
from django.utils import timezone

from apps.users.admin import ModerationAdmin

from . import services
from .models import Membership, ModerationAction, Room

BAN_DURATIONS = [
    ("", "Permanent"),
    ("3600", "1 hour"),
    ("86400", "1 day"),
    ("604800", "1 week"),
    ("2592000", "30 days"),
]
MUTE_DURATIONS = [
    ("600", "10 minutes"),
    ("3600", "1 hour"),
    ("86400", "1 day"),
    ("604800", "1 week"),
]


class ReasonForm(forms.Form):
    reason = forms.CharField(
        max_length=500,
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Recorded in the moderation log (a default names you and the admin).",
    )


class DurationForm(ReasonForm):
    def __init__(self, *args, durations, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["duration"] = forms.ChoiceField(choices=durations, required=False)

    def until(self):
        seconds = self.cleaned_data.get("duration")
        return timezone.now() + timedelta(seconds=int(seconds)) if seconds else None


class MembershipInline(admin.TabularInline):
    model = Membership
    fields = ("user", "role", "is_active", "joined_at", "muted_until", "banned_until", "ban_reason")
    readonly_fields = fields
    extra = 0
    show_change_link = True
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Room)
class RoomAdmin(ModerationAdmin):
    list_display = (
        "id",
        "name",
        "kind",
        "created_by",
        "created_at",
        "archived_at",
        "last_seq",
        "slow_mode_seconds",
        "post_policy",
    )
    list_filter = ("kind", ("archived_at", admin.EmptyFieldListFilter), "post_policy")
    search_fields = ("name", "topic")
    list_select_related = ("created_by",)
    inlines = [MembershipInline]
    actions = ["archive_rooms"]

    @admin.action(description="Archive (read-only for good)", permissions=["moderate"])
    def archive_rooms(self, request, queryset):
        verb = "Archive"
        return self.run_action(
            request,
            queryset,
            verb=verb,
            form_class=ReasonForm,
            call=lambda room, form: services.room_archive(
                room=room, actor=request.user, reason=self.reason(request, form, verb)
            ),
        )


class StateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("member", "Member"), ("banned", "Banned"), ("muted", "Muted"), ("left", "Left")]

    def queryset(self, request, queryset):
        now = timezone.now()
        if self.value() == "member":
            return queryset.active()
        if self.value() == "banned":
            return queryset.banned()
        if self.value() == "muted":
            return queryset.active().filter(muted_until__gt=now)
        if self.value() == "left":
            return queryset.filter(is_active=False, banned_at__isnull=True)
        return queryset


def member_action(name, description, service, *, durations=None, ask=True, reason=True, **fixed):
    """An admin action calling one membership service on each selected membership.

    `durations` adds a duration choice (passed as `until`); `ask` shows the reason form first
    (else the default reason is used); `fixed` are further keyword arguments of the service.
    """
    verb = description.split(" ")[0] if not fixed.get("role") else f"Role {fixed['role']}"

    def action(modeladmin, request, queryset):
        def call(membership, form):
            kwargs = dict(fixed, room=membership.room, actor=request.user, user=membership.user)
            if reason:
                kwargs["reason"] = modeladmin.reason(request, form, verb)
            if durations:
                kwargs["until"] = form.until()
            return service(**kwargs)

        form_class = (DurationForm if durations else ReasonForm) if ask else None
        return modeladmin.run_action(
            request,
            queryset,
            verb=verb,
            call=call,
            form_class=form_class,
            form_kwargs={"durations": durations} if durations else None,
        )

    action.__name__ = name
    return admin.action(description=description, permissions=["moderate"])(action)


@admin.register(Membership)
class MembershipAdmin(ModerationAdmin):
    list_display = (
        "user",
        "room",
        "role",
        "is_active",
        "muted_until",
        "banned_at",
        "banned_until",
        "ban_reason",
    )
    list_filter = (StateFilter, "role")
    search_fields = ("user__username", "room__name")
    list_select_related = ("user", "room")
    actions = [
        member_action("ban", "Ban from the room", services.member_ban, durations=BAN_DURATIONS),
        member_action("unban", "Unban (lift the ban)", services.member_unban),
        member_action("mute", "Mute", services.member_mute, durations=MUTE_DURATIONS),
        member_action(
            "unmute", "Unmute (lift the mute)", services.member_mute, ask=False, until=None
        ),
        member_action("kick", "Kick out of the room", services.member_kick),
        member_action(
            "make_owner",
            "Make room owner",
            services.member_set_role,
            ask=False,
            reason=False,
            role=Membership.Role.OWNER,
        ),
        member_action(
            "make_moderator",
            "Make room moderator",
            services.member_set_role,
            ask=False,
            reason=False,
            role=Membership.Role.MODERATOR,
        ),
        member_action(
            "make_member",
            "Make plain member",
            services.member_set_role,
            ask=False,
            reason=False,
            role=Membership.Role.MEMBER,
        ),
    ]


@admin.register(ModerationAction)
class ModerationActionAdmin(ModerationAdmin):
    """The audit trail: who did what to whom, when and why. Read-only."""

    list_display = (
        "created_at",
        "actor",
        "action",
        "room",
        "target_user",
        "target_message_id",
        "reason",
    )
    list_filter = ("action",)
    search_fields = ("actor__username", "target_user__username", "room__name", "reason")
    list_select_related = ("actor", "room", "target_user")
    date_hierarchy = "created_at"
