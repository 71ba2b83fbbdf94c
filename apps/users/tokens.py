"""Scoped, expiring, revocable API tokens (PROTOCOL §10), and the bot accounts that use them.

A token reads `chat_<key id>_<secret>`: the key id (12 hex digits) finds the row, the secret
(32 random bytes, URL-safe base64) is checked against the stored SHA-256 — a hash of a
high-entropy secret needs no salt or slow hashing, and the server never holds the secret
itself. Keys of DRF's single `authtoken` (`POST /api/auth/token/`) keep working beside them:
`authenticate()` tells the two apart by the prefix.

A `read` token may read (REST safe methods, WebSocket subscribe/unsubscribe/ping); anything
else is `forbidden`. Revoking a token deletes its row and closes, on every server process, the
sockets opened with it (apps.users.sessions, close 4401).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework import authentication, exceptions
from rest_framework.permissions import SAFE_METHODS

from apps.core.errors import forbidden, invalid, not_found

from .models import ApiToken

User = get_user_model()
PREFIX = "chat_"
KEY_ID_LENGTH = 12
NAME_MAX = 100
TOKENS_PER_USER = 100
BOTS_PER_USER = 20
READ_ONLY_MESSAGE = "this token is read-only (scope `read`)"


def digest(secret: str) -> str:
    """What is stored of a secret (its SHA-256, hex)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def split(key: str) -> tuple[str, str] | None:
    """(key id, secret) of a key in our format, else None (a DRF authtoken key, or junk)."""
    if not key.startswith(PREFIX):
        return None
    key_id, sep, secret = key[len(PREFIX) :].partition("_")
    if len(key_id) != KEY_ID_LENGTH or not sep or not secret:
        return None
    return key_id, secret


def lookup(key: str) -> ApiToken | None:
    """The live (unexpired) token of `key`, with its user, or None. Constant-time compare."""
    parts = split(key)
    if parts is None:
        return None
    token = ApiToken.objects.select_related("user").filter(key_id=parts[0]).first()
    if token is None or not hmac.compare_digest(token.digest, digest(parts[1])):
        return None
    if token.expired():
        return None
    return token


def touch(token: ApiToken) -> None:
    """Note the token's use, at most once per TOKEN_LAST_USED_SECONDS (one UPDATE, which
    concurrent requests of the same token do not repeat: the condition holds for one)."""
    now = timezone.now()
    interval = timedelta(seconds=settings.TOKEN_LAST_USED_SECONDS)
    if token.last_used_at is not None and now - token.last_used_at < interval:
        return
    stale = ApiToken.objects.filter(pk=token.pk)
    if token.last_used_at is not None:
        stale = stale.filter(last_used_at__lt=now - interval)
    else:
        stale = stale.filter(last_used_at__isnull=True)
    stale.update(last_used_at=now)
    token.last_used_at = now


def user_for_key(key: str):
    """(user, ApiToken or None) for a WebSocket or REST key of either kind, or (None, None)."""
    token = lookup(key)
    if token is not None:
        if not token.user.is_active:
            return None, None
        touch(token)
        return token.user, token
    if split(key) is not None:
        return None, None
    from rest_framework.authtoken.models import Token

    legacy = Token.objects.select_related("user").filter(key=key[:40]).first()
    if legacy is None or not legacy.user.is_active:
        return None, None
    return legacy.user, None


class TokenAuthentication(authentication.TokenAuthentication):
    """DRF's `Authorization: Token <key>` for both kinds of key; a `read` token's unsafe
    request is refused here (403 `forbidden`), before any view, whatever its permissions."""

    def authenticate(self, request):
        result = super().authenticate(request)
        if result is not None:
            token = result[1]
            if (
                isinstance(token, ApiToken)
                and not token.can_write
                and (request.method not in SAFE_METHODS)
            ):
                raise exceptions.PermissionDenied(READ_ONLY_MESSAGE)
        return result

    def authenticate_credentials(self, key):
        user, token = user_for_key(key)
        if user is None:
            raise exceptions.AuthenticationFailed("invalid, expired or revoked token")
        return user, token


# --- Services ---------------------------------------------------------------------------------


def clean_scopes(scopes) -> list[str]:
    if (
        not isinstance(scopes, list)
        or not scopes
        or any(not isinstance(s, str) or s not in ApiToken.SCOPES for s in scopes)
    ):
        raise invalid('scopes must be a non-empty list of "read" and "write"', field="scopes")
    return sorted(set(scopes))


def clean_name(name) -> str:
    if not isinstance(name, str) or not name.strip():
        raise invalid("name must be a non-empty string", field="name")
    name = name.strip()
    if len(name) > NAME_MAX:
        raise invalid(f"name is longer than {NAME_MAX} characters", field="name")
    return name


def token_create(*, user, name, scopes, expires_at=None) -> tuple[ApiToken, str]:
    """A new token of `user` and its key (shown once: only its hash is kept)."""
    name, scopes = clean_name(name), clean_scopes(scopes)
    if expires_at is not None and expires_at <= timezone.now():
        raise invalid("expires_at must be in the future", field="expires_at")
    if ApiToken.objects.filter(user=user).count() >= TOKENS_PER_USER:
        raise forbidden(f"at most {TOKENS_PER_USER} tokens per account; revoke some first")
    for _ in range(3):
        key_id, secret = secrets.token_hex(KEY_ID_LENGTH // 2), secrets.token_urlsafe(32)
        try:
            with transaction.atomic():
                token = ApiToken.objects.create(
                    user=user,
                    name=name,
                    key_id=key_id,
                    digest=digest(secret),
                    scopes=scopes,
                    expires_at=expires_at,
                )
        except IntegrityError:  # a key id taken already (one in 2^48): draw again
            continue
        return token, f"{PREFIX}{key_id}_{secret}"
    raise RuntimeError("could not draw a free token id")


def token_revoke(*, user, token_id) -> None:
    """Delete the token; after commit, close its sockets on every process (4401)."""
    from . import sessions

    with transaction.atomic():
        deleted, _ = ApiToken.objects.filter(user=user, pk=token_id).delete()
        if not deleted:
            raise not_found("token not found")
        transaction.on_commit(lambda: sessions.close_token_sockets(user.pk, token_id))


# --- Bots -------------------------------------------------------------------------------------


def bot_create(*, owner, username) -> tuple[User, ApiToken, str]:
    """A bot account owned by `owner` and a read-write token for it (its key shown once)."""
    from .services import clean_username

    if getattr(owner, "is_bot", False):
        raise forbidden("bots cannot create bots")
    username = clean_username(username)
    if User.objects.filter(bot_owner=owner, is_active=True).count() >= BOTS_PER_USER:
        raise forbidden(f"at most {BOTS_PER_USER} bots per account")
    try:
        with transaction.atomic():
            bot = User(username=username, is_bot=True, bot_owner=owner)
            bot.set_unusable_password()
            bot.save()
            token, key = token_create(user=bot, name="bot", scopes=[ApiToken.READ, ApiToken.WRITE])
    except IntegrityError:  # taken at the same moment
        raise invalid("that username is taken", field="username") from None
    return bot, token, key


def bot_delete(*, owner, bot_id) -> None:
    """Deactivate the owner's bot: its tokens go, its sockets close (4403, the rights signal);
    its messages and events stay (they PROTECT their author, as for any account)."""
    bot = User.objects.filter(pk=bot_id, bot_owner=owner, is_bot=True, is_active=True).first()
    if bot is None:
        raise not_found("bot not found")
    with transaction.atomic():
        ApiToken.objects.filter(user=bot).delete()
        bot.is_active = False
        bot.save(update_fields=["is_active"])
