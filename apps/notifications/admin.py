from django.contrib import admin

from .models import MentionCursor, Notification


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = (
        "created_at",
        "user",
        "kind",
        "room",
        "seq",
        "actor",
        "excerpt",
        "is_read",
        "emailed_at",
    )
    list_filter = (
        "kind",
        ("read_at", admin.EmptyFieldListFilter),
        ("emailed_at", admin.EmptyFieldListFilter),
    )
    search_fields = ("user__username", "=event_id")
    list_select_related = ("user", "actor", "room")
    raw_id_fields = ("user", "actor", "room")
    ordering = ("-created_at",)
    readonly_fields = (
        "user",
        "kind",
        "event_id",
        "room",
        "seq",
        "message_id",
        "actor",
        "excerpt",
        "created_at",
        "emailed_at",
    )

    @admin.display(boolean=True, description="read", ordering="read_at")
    def is_read(self, obj):
        return obj.is_read

    def has_add_permission(self, request):
        return False


@admin.register(MentionCursor)
class MentionCursorAdmin(admin.ModelAdmin):
    """How far the mention worker has read each room's log, and how far behind it is."""

    list_display = ("room", "seq", "head", "lag")
    list_select_related = ("room",)
    raw_id_fields = ("room",)
    readonly_fields = ("room", "seq")
    ordering = ("room",)

    @admin.display(description="room's last seq")
    def head(self, obj):
        return obj.room.last_seq

    @admin.display(description="events behind")
    def lag(self, obj):
        return max(0, obj.room.last_seq - obj.seq)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
