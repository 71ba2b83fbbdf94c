"""Writes to users: open sign-up."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model, password_validation
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from apps.core.errors import forbidden, invalid, not_found

from .models import Block, latin_lookalike, username_key

User = get_user_model()
# Site moderators hold this permission (the Moderators group; superusers hold every one).
MODERATE_PERMISSION = "rooms.moderate_room"
ERASED_PREFIX = "deleted-user-"  # apps.messaging.erasure renames an erased account so


def key_reserved(username: str) -> bool:
    """The names of erased accounts (deleted-user-<id>) are not for sign-up."""
    return username_key(username).startswith(ERASED_PREFIX)


def clean_username(username) -> str:
    """A username fit for a new account (NFKC-normalized), or `invalid`: one script, the
    allowed characters, not reserved, not taken (case-folded), not a look-alike of a taken one."""
    if not isinstance(username, str) or not username.strip():
        raise invalid("username must be a non-empty string", field="username")
    username = User.normalize_username(username.strip())
    if len(username) > 150:
        raise invalid("username is longer than 150 characters", field="username")
    try:
        for validator in User._meta.get_field("username").validators:
            validator(username)
    except ValidationError as exc:
        if exc.code == "mixed_script":
            raise invalid(f"username: {exc.messages[0]}", field="username") from None
        raise invalid(
            "username may contain only letters, digits and @/./+/-/_", field="username"
        ) from None
    if key_reserved(username):
        raise invalid("that username is reserved", field="username")
    key = username_key(username)
    if User.objects.filter(username_key=key).exists():
        raise invalid("that username is taken", field="username")
    lookalike = latin_lookalike(key)
    if lookalike is not None and User.objects.filter(username_key=lookalike).exists():
        raise invalid("that username looks like an existing one", field="username")
    return username


def user_signup(*, username, password, email="") -> User:
    """Create an account when sign-up is open (SIGNUP_ENABLED). The username is NFKC-normalized
    first; no two may share a case-folded form (a unique index); letters in one script only;
    the password passes AUTH_PASSWORD_VALIDATORS."""
    if not settings.SIGNUP_ENABLED:
        raise forbidden("sign-up is disabled on this server")
    username = clean_username(username)
    if not isinstance(password, str):
        raise invalid("password must be a string", field="password")
    try:
        password_validation.validate_password(password, User(username=username, email=email or ""))
    except ValidationError as exc:
        raise invalid("password: " + " ".join(exc.messages), field="password") from None
    try:
        with transaction.atomic():
            return User.objects.create_user(username=username, password=password, email=email or "")
    except IntegrityError:  # taken at the same moment: the unique index on username_key
        raise invalid("that username is taken", field="username") from None


def is_site_moderator(user) -> bool:
    """Staff moderators (the Moderators group, superusers) may moderate every room."""
    return bool(user and user.is_active and user.is_staff and user.has_perm(MODERATE_PERMISSION))


# --- Blocking and the direct-message policy (PROTOCOL §7) -------------------------------------


def block_create(*, blocker, blocked) -> tuple[Block, bool]:
    """Block someone: (the block, whether it is new). Blocking again changes nothing."""
    if blocked is None or not blocked.is_active:
        raise not_found("user not found")
    if blocked.pk == blocker.pk:
        raise invalid("you cannot block yourself")
    return Block.objects.get_or_create(blocker=blocker, blocked=blocked)


def block_delete(*, blocker, blocked_id) -> None:
    """Lift a block (not_found if there was none)."""
    deleted, _ = Block.objects.filter(blocker=blocker, blocked_id=blocked_id).delete()
    if not deleted:
        raise not_found("you have not blocked that user")


def user_set_dm_policy(*, user, dm_policy) -> User:
    """Who may open a direct room with the user: anyone, people in their rooms, nobody."""
    if dm_policy not in User.DmPolicy.values:
        raise invalid("dm_policy must be 'anyone', 'shared_rooms' or 'nobody'")
    if dm_policy != user.dm_policy:
        user.dm_policy = dm_policy
        user.save(update_fields=["dm_policy"])
    return user
