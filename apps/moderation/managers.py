from django.db import models
from django.db.models import Case, IntegerField, Value, When

from apps.users.services import is_site_moderator

# Open reports first (0), then the handled ones; newest first within each.
QUEUE_ORDER = (
    Case(When(status="open", then=Value(0)), default=Value(1), output_field=IntegerField()).asc(),
    "-created_at",
)


class ReportQuerySet(models.QuerySet):
    def open(self):
        """Reports nobody has handled yet."""
        return self.filter(status="open")

    def moderated_by(self, user):
        """Reports of the rooms the user moderates (every report for a site moderator)."""
        if not user or not user.is_authenticated:
            return self.none()
        if is_site_moderator(user):
            return self
        return self.filter(
            room__memberships__user=user,
            room__memberships__is_active=True,
            room__memberships__role__in=["owner", "moderator"],
        )

    def body_erasable(self, before):
        """Handled reports whose copy of the body is due for erasure (handled before `before`)."""
        return self.exclude(status="open").filter(
            resolved_at__lt=before, body_erased_at__isnull=True
        )
