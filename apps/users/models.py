from django.contrib.auth.models import AbstractUser


class User(AbstractUser):
    """The chat's user. Custom from the first migration so fields can be added later."""

    class Meta(AbstractUser.Meta):
        swappable = "AUTH_USER_MODEL"

    def actor(self) -> dict:
        """The user as an envelope `actor` / `user` object."""
        return {"id": self.pk, "username": self.username}
