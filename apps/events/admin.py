"""The event log / Kafka outbox in the admin: read-only, filtered by room, type and publish state.

The changelist shows the outbox lag (pending count, oldest unpublished age, failing rows) above
the rows, so a stuck publisher is visible where the rows that it holds back are.
"""

from __future__ import annotations

import json

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.utils.html import format_html

from .models import ConsumedEvent, Event, Outbox
from .outbox import outbox_status


class PublishStateFilter(admin.SimpleListFilter):
    title = "publish state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [
            ("published", "Published"),
            ("pending", "Pending"),
            ("failing", "Pending with an error"),
        ]

    def queryset(self, request, queryset):
        if self.value() == "published":
            return queryset.published()
        if self.value() == "pending":
            return queryset.unpublished()
        if self.value() == "failing":
            return queryset.unpublished().exclude(outbox__last_error="")
        return queryset


class RoomFilter(admin.SimpleListFilter):
    """By room: the rooms with unpublished rows are offered; any id works as ?room=ID."""

    title = "room"
    parameter_name = "room"

    def lookups(self, request, model_admin):
        rooms = (
            Outbox.objects.exclude(room_id__isnull=True)
            .order_by("room_id")
            .values_list("room_id", flat=True)
            .distinct()[:20]
        )
        return [(str(r), f"#{r}") for r in rooms]

    def queryset(self, request, queryset):
        value = self.value()
        if not value:
            return queryset
        # ASCII digits only ("²".isdigit() is true, and int("²") fails), and within bigint.
        if value.isascii() and value.isdigit() and int(value) < 2**63:
            return queryset.filter(room_id=int(value))
        return queryset.none()


def _outbox(event) -> Outbox | None:
    """The event's outbox row (None once published): list_select_related reads it."""
    try:
        return event.outbox
    except Outbox.DoesNotExist:
        return None


def _pending(event, field: str, missing):
    """A field of the event's outbox row, or `missing` (published, or the field empty)."""
    pending = _outbox(event)
    value = None if pending is None else getattr(pending, field)
    return missing if value is None else value


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    list_display = (
        "ts",
        "type",
        "room_link",
        "seq",
        "actor",
        "published",
        "publish_attempts",
        "short_error",
    )
    list_filter = (PublishStateFilter, "type", RoomFilter)
    search_fields = ("=id",)
    list_select_related = ("actor", "outbox")
    ordering = ("-ts",)
    show_full_result_count = False
    change_list_template = "admin/events/event/change_list.html"
    fields = (
        "id",
        "type",
        "room",
        "seq",
        "actor",
        "ts",
        "published",
        "publish_attempts",
        "next_attempt_at",
        "last_error",
        "pretty_envelope",
    )
    readonly_fields = fields

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="room", ordering="room_id")
    def room_link(self, obj):
        return (
            "-" if obj.room_id is None else format_html('<a href="?room={0}">#{0}</a>', obj.room_id)
        )

    @admin.display(boolean=True, description="published", ordering="outbox")
    def published(self, obj):
        return _outbox(obj) is None

    @admin.display(description="publish attempts")
    def publish_attempts(self, obj):
        return _pending(obj, "publish_attempts", "-")

    @admin.display(description="next attempt at")
    def next_attempt_at(self, obj):
        return _pending(obj, "next_attempt_at", "-")

    @admin.display(description="last error")
    def last_error(self, obj):
        return _pending(obj, "last_error", "")

    @admin.display(description="last error")
    def short_error(self, obj):
        error = self.last_error(obj)
        return (error[:80] + "…") if len(error) > 80 else error

    @admin.display(description="envelope")
    def pretty_envelope(self, obj):
        return format_html("<pre>{}</pre>", json.dumps(obj.envelope, indent=2, ensure_ascii=False))

    def changelist_view(self, request, extra_context=None):
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied  # before the outbox figures are read
        extra_context = dict(extra_context or {})
        try:
            extra_context["outbox"] = outbox_status()
        except Exception as exc:  # noqa: BLE001 - the page still lists rows
            extra_context["outbox"] = {"ok": False, "error": type(exc).__name__}
        return super().changelist_view(request, extra_context=extra_context)


@admin.register(ConsumedEvent)
class ConsumedEventAdmin(admin.ModelAdmin):
    list_display = ("handled_at", "group", "event_id")
    list_filter = ("group",)
    search_fields = ("=event_id",)
    ordering = ("-handled_at",)
    show_full_result_count = False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
