"""Webhooks in the admin: each outgoing webhook with its cursors, lag and last error."""

from django.contrib import admin
from django.db.models import F

from .models import IncomingWebhook, OutgoingWebhook, WebhookCursor


class CursorInline(admin.TabularInline):
    model = WebhookCursor
    fields = (
        "room",
        "seq",
        "head",
        "lag",
        "attempts",
        "next_attempt_at",
        "last_error",
        "delivered_at",
    )
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False

    def get_queryset(self, request):
        return (
            super().get_queryset(request).select_related("room").annotate(head=F("room__last_seq"))
        )

    def has_add_permission(self, request, obj=None):
        return False

    @admin.display(description="room head")
    def head(self, obj):
        return obj.head

    @admin.display(description="lag (events)")
    def lag(self, obj):
        return max(0, obj.head - obj.seq)


@admin.register(OutgoingWebhook)
class OutgoingWebhookAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "owner",
        "url",
        "is_active",
        "rooms_followed",
        "total_lag",
        "failing",
        "created_at",
    )
    list_filter = ("is_active",)
    search_fields = ("owner__username", "url")
    list_select_related = ("owner",)
    raw_id_fields = ("owner",)
    readonly_fields = ("created_at",)
    exclude = ("secret",)
    inlines = [CursorInline]

    @admin.display(description="rooms")
    def rooms_followed(self, obj):
        return obj.cursors.count()

    @admin.display(description="lag (events)")
    def total_lag(self, obj):
        return sum(
            max(0, head - seq) for seq, head in obj.cursors.values_list("seq", "room__last_seq")
        )

    @admin.display(description="last error")
    def failing(self, obj):
        cursor = obj.cursors.exclude(last_error="").order_by("-next_attempt_at").first()
        return cursor.last_error if cursor else ""


@admin.register(IncomingWebhook)
class IncomingWebhookAdmin(admin.ModelAdmin):
    list_display = ("id", "room", "name", "bot", "created_by", "created_at")
    list_select_related = ("room", "bot", "created_by")
    raw_id_fields = ("room", "bot", "created_by")
    readonly_fields = ("room", "bot", "created_by", "key_id", "created_at")
    exclude = ("digest",)
