"""Writes to users: open sign-up."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model, password_validation
from django.contrib.auth.validators import UnicodeUsernameValidator
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from chatproject.errors import forbidden, invalid, not_found

User = get_user_model()
PASSWORD_MIN_LENGTH = 8


def user_signup(*, username, password, email="") -> "User":
    """Create an account when sign-up is open (SIGNUP_ENABLED); usernames are case-insensitively unique."""
    if not settings.SIGNUP_ENABLED:
        raise forbidden("sign-up is disabled on this server")
    if not isinstance(username, str) or not username.strip():
        raise invalid("username must be a non-empty string")
    username = username.strip()
    if len(username) > 150:
        raise invalid("username is longer than 150 characters")
    try:
        UnicodeUsernameValidator()(username)
    except ValidationError:
        raise invalid("username may contain only letters, digits and @/./+/-/_") from None
    if not isinstance(password, str) or len(password) < PASSWORD_MIN_LENGTH:
        raise invalid(f"password must be at least {PASSWORD_MIN_LENGTH} characters")
    candidate = User(username=username, email=email or "")
    try:
        password_validation.validate_password(password, candidate)
    except ValidationError as exc:
        raise invalid(" ".join(exc.messages)) from None
    if User.objects.filter(username__iexact=username).exists():
        raise invalid("that username is taken")
    try:
        with transaction.atomic():
            return User.objects.create_user(username=username, password=password, email=email or "")
    except IntegrityError:  # taken at the same moment
        raise invalid("that username is taken") from None


# --- Blocking and the direct-message policy (PROTOCOL §7) -------------------------------------


def block_create(*, blocker, blocked) -> tuple["Block", bool]:
    """Block someone: (the block, whether it is new). Blocking again changes nothing."""
    from .models import Block

    if blocked is None or not blocked.is_active:
        raise not_found("user not found")
    if blocked.pk == blocker.pk:
        raise invalid("you cannot block yourself")
    return Block.objects.get_or_create(blocker=blocker, blocked=blocked)


def block_delete(*, blocker, blocked_id) -> None:
    """Lift a block (not_found if there was none)."""
    from .models import Block

    deleted, _ = Block.objects.filter(blocker=blocker, blocked_id=blocked_id).delete()
    if not deleted:
        raise not_found("you have not blocked that user")


def user_set_dm_policy(*, user, dm_policy) -> "User":
    """Who may open a direct room with the user: anyone, people in their rooms, nobody."""
    if dm_policy not in User.DmPolicy.values:
        raise invalid("dm_policy must be 'anyone', 'shared_rooms' or 'nobody'")
    if dm_policy != user.dm_policy:
        user.dm_policy = dm_policy
        user.save(update_fields=["dm_policy"])
    return user
