"""Messages in the moderators' admin: search, filter by room and author, delete via the service.

A message deleted here disappears live from every client: message_delete records the
message.deleted event and fans it out after commit, like a deletion over the API.

A message's page lists its attachments (name, type, size, the thumbnail of an image, a link
that opens the file). The links are the authorized download view's: it answers the
moderator's admin session, since site moderators may read every room.
"""

from django.contrib import admin
from django.template.defaultfilters import filesizeformat
from django.utils.html import format_html
from django.utils.text import Truncator

from apps.attachments import services as attachments
from apps.attachments.models import Upload
from apps.rooms.admin import ReasonForm
from apps.users.admin import ModerationAdmin, ReadOnly

from . import services
from .models import Message


class DeletedFilter(admin.SimpleListFilter):
    title = "deleted"
    parameter_name = "deleted"

    def lookups(self, request, model_admin):
        return [("no", "Live"), ("yes", "Deleted")]

    def queryset(self, request, queryset):
        if self.value() == "no":
            return queryset.visible()
        if self.value() == "yes":
            return queryset.filter(deleted_at__isnull=False)
        return queryset


PREVIEW_PIXELS = 160  # the longer side of a thumbnail shown in the admin


class AttachmentInline(ReadOnly, admin.TabularInline):
    """Read-only: a message's files come and go with it (a redaction removes them)."""

    model = Upload
    fk_name = "message"
    fields = ("preview", "name", "content_type", "file_size", "dimensions", "open_link")
    readonly_fields = fields
    ordering = ("position",)
    extra = 0
    can_delete = False
    verbose_name = "attachment"
    verbose_name_plural = "attachments"

    def has_view_permission(self, request, obj=None):
        # Whoever may view the message sees its files (moderators have no upload pages).
        return request.user.has_perm(f"{Message._meta.app_label}.view_message")

    @admin.display(description="thumbnail")
    def preview(self, upload):
        if not upload.thumbnail:
            return "(none yet)" if upload.is_image else "–"
        # Sized by attributes: the admin's CSP allows no inline style.
        width, height = PREVIEW_PIXELS, PREVIEW_PIXELS
        if upload.width and upload.height:
            scale = PREVIEW_PIXELS / max(upload.width, upload.height)
            width, height = (
                max(1, round(upload.width * scale)),
                max(1, round(upload.height * scale)),
            )
        return format_html(
            '<a href="{}" target="_blank" rel="noopener">'
            '<img src="{}" alt="{}" width="{}" height="{}"></a>',
            attachments.path(upload.pk, attachments.FILE),
            attachments.path(upload.pk, attachments.THUMBNAIL),
            f"thumbnail of {upload.name}",
            width,
            height,
        )

    @admin.display(description="size")
    def file_size(self, upload):
        return f"{filesizeformat(upload.size)} ({upload.size} bytes)"

    @admin.display(description="pixels")
    def dimensions(self, upload):
        return f"{upload.width} × {upload.height}" if upload.width else "–"

    @admin.display(description="file")
    def open_link(self, upload):
        return format_html(
            '<a href="{}" target="_blank" rel="noopener">Open {}</a>',
            attachments.path(upload.pk, attachments.FILE),
            upload.name,
        )


@admin.register(Message)
class MessageAdmin(ModerationAdmin):
    list_display = (
        "id",
        "room",
        "author",
        "excerpt",
        "seq",
        "created_at",
        "edited_at",
        "deleted_at",
    )
    list_filter = (
        DeletedFilter,
        ("room", admin.RelatedOnlyFieldListFilter),
        ("author", admin.RelatedOnlyFieldListFilter),
    )
    search_fields = ("body", "author__username", "room__name")
    list_select_related = ("room", "author")
    raw_id_fields = ("reply_to",)
    inlines = [AttachmentInline]
    actions = ["delete_messages"]

    @admin.display(description="body")
    def excerpt(self, message):
        return "(deleted)" if message.is_deleted else Truncator(message.body).chars(80)

    @admin.action(description="Delete (removed live from every client)", permissions=["moderate"])
    def delete_messages(self, request, queryset):
        verb = "Delete"
        return self.run_action(
            request,
            queryset.select_related("room"),
            verb=verb,
            form_class=ReasonForm,
            call=lambda message, form: services.message_delete(
                message=message, actor=request.user, reason=self.reason(request, form, verb)
            ),
        )
