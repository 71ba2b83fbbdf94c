from django.contrib import admin

from .models import Upload


@admin.register(Upload)
class UploadAdmin(admin.ModelAdmin):
    """Read-only: files come and go with their messages (and the unused-upload purge)."""

    list_display = ("id", "name", "content_type", "size", "owner", "message", "created_at")
    list_filter = ("content_type",)
    search_fields = ("name", "owner__username")
    raw_id_fields = ("owner", "message")
    readonly_fields = [f.name for f in Upload._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
