"""Messages in the moderators' admin: search, filter by room and author, delete via the service.

A message deleted here disappears live from every client: message_delete records the
message.deleted event and fans it out after commit, like a deletion over the API.
"""

from django.contrib import admin
from django.utils.text import Truncator

from apps.rooms.admin import ReasonForm
from apps.users.admin import ModerationAdmin

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
