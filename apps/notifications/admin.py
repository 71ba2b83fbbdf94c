from django.contrib import admin

from .models import Notification


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = ("created_at", "user", "kind", "room", "seq", "actor", "excerpt", "is_read")
    list_filter = ("kind", ("read_at", admin.EmptyFieldListFilter))
    search_fields = ("user__username", "=event_id")
    list_select_related = ("user", "actor", "room")
    raw_id_fields = ("user", "actor", "room")
    ordering = ("-created_at",)
    readonly_fields = ("user", "kind", "event_id", "room", "seq", "message_id", "actor",
                       "excerpt", "created_at")

    @admin.display(boolean=True, description="read", ordering="read_at")
    def is_read(self, obj):
        return obj.is_read

    def has_add_permission(self, request):
        return False
