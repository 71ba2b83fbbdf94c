"""Users in the admin: Django's user admin (superusers manage accounts and the Moderators group).

Nobody deletes a user here: the delete is replaced by "Erase account" (superusers here; site
moderators, for accounts that are not staff, from the moderation app's accounts list), which deactivates the account at once and redacts
its history in the background (apps.messaging.erasure). Deleting the row would take nothing
with it anyway: messages, reactions, memberships and events PROTECT their user.
"""

from django import forms
from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin

from apps.messaging import erasure
from apps.rooms.admin import ModerationAdmin

from .models import User


class EraseForm(forms.Form):
    confirm = forms.BooleanField(
        required=True, label="Erase these accounts",
        help_text="They are deactivated at once, every message they wrote is deleted and their "
                  "name is replaced by deleted-user-<id> everywhere. This cannot be undone.",
    )


def erase_selected(model_admin, request, queryset):
    """The erase action of a ModerationAdmin-like admin: confirm, then account_erase each
    (which refuses whom the caller may not erase)."""
    return model_admin.run_action(
        request, queryset, verb="Erase", form_class=EraseForm,
        call=lambda user, form: erasure.account_erase(user=user, actor=request.user),
    )


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    list_display = ("username", "email", "is_active", "is_staff", "is_superuser", "date_joined",
                    "erased_at")
    list_filter = ("is_active", "is_staff", "is_superuser", "groups")
    readonly_fields = ("erased_at",)
    actions = ["erase_accounts"]
    # The confirmation page and the per-object loop of the moderators' actions.
    run_action = ModerationAdmin.run_action
    render_form = ModerationAdmin.render_form

    def get_fieldsets(self, request, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None:
            return fieldsets
        return [*fieldsets, ("Erasure", {"fields": ("erased_at",)})]

    def has_delete_permission(self, request, obj=None):
        return False

    def has_erase_permission(self, request):
        return request.user.is_superuser

    @admin.action(description="Erase account (deletes every message; cannot be undone)",
                  permissions=["erase"])
    def erase_accounts(self, request, queryset):
        return erase_selected(self, request, queryset)
