"""Users in the admin: Django's user admin (superusers manage accounts and the Moderators group),
and `ModerationAdmin`, the base of every moderators' admin (rooms, memberships, reports): read-only,
each change an action that calls a service.

Nobody deletes a user here: the delete is replaced by "Erase account" (superusers here; site
moderators, for accounts that are not staff, from the moderation app's accounts list), which
deactivates the account at once and redacts its history in the background
(apps.messaging.erasure). Deleting the row would take nothing with it anyway: messages,
reactions, memberships and events PROTECT their user.
"""

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.template.response import TemplateResponse

from apps.core.errors import ServiceError
from apps.messaging import erasure

from .models import User
from .services import is_site_moderator

# The confirmation page of the moderators' actions (every admin that changes anything).
FORM_TEMPLATE = "admin/rooms/moderation_form.html"


class ReadOnly:
    """No add, change or delete for anyone (a ModelAdmin's or an inline's)."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ModerationAdmin(ReadOnly, admin.ModelAdmin):
    """Read-only for everyone; actions (services) are the only way to change anything."""

    def has_moderate_permission(self, request):
        return is_site_moderator(request.user)

    def default_reason(self, request, verb):
        return f"{verb} by {request.user.get_username()} in the admin"

    def run_action(self, request, queryset, *, verb, call, form_class=None, form_kwargs=None):
        """Apply `call(obj, form)` to each selected object; with a form, ask for it first."""
        form = None
        if form_class is not None:
            if "apply" not in request.POST:
                form = form_class(**(form_kwargs or {}))
                return self.render_form(request, queryset, verb, form)
            form = form_class(request.POST, **(form_kwargs or {}))
            if not form.is_valid():
                return self.render_form(request, queryset, verb, form)
        done, failed = 0, []
        for obj in queryset:
            if not is_site_moderator(request.user):  # re-checked per object
                failed.append(f"{obj}: only moderators may do this")
                break
            try:
                call(obj, form)
                done += 1
            except ServiceError as exc:
                failed.append(f"{obj}: {exc.message}")
        if done:
            self.message_user(request, f"{verb}: {done} done.", messages.SUCCESS)
        for problem in failed:
            self.message_user(request, f"{verb} refused for {problem}", messages.ERROR)
        return None

    def render_form(self, request, queryset, verb, form):
        context = {
            **self.admin_site.each_context(request),
            "title": verb,
            "form": form,
            "queryset": queryset,
            "opts": self.model._meta,
            "action": request.POST.get("action", ""),
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, FORM_TEMPLATE, context)

    def reason(self, request, form, verb):
        return (form and form.cleaned_data.get("reason")) or self.default_reason(request, verb)


class EraseForm(forms.Form):
    confirm = forms.BooleanField(
        required=True,
        label="Erase these accounts",
        help_text="They are deactivated at once, every message they wrote is deleted and their "
        "name is replaced by deleted-user-<id> everywhere. This cannot be undone.",
    )


def erase_selected(model_admin, request, queryset):
    """The erase action of a ModerationAdmin-like admin: confirm, then account_erase each
    (which refuses whom the caller may not erase)."""
    return model_admin.run_action(
        request,
        queryset,
        verb="Erase",
        form_class=EraseForm,
        call=lambda user, form: erasure.account_erase(user=user, actor=request.user),
    )


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    list_display = (
        "username",
        "email",
        "is_active",
        "is_staff",
        "is_superuser",
        "date_joined",
        "erased_at",
    )
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

    @admin.action(
        description="Erase account (deletes every message; cannot be undone)", permissions=["erase"]
    )
    def erase_accounts(self, request, queryset):
        return erase_selected(self, request, queryset)
