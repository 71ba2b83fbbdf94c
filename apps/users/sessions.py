"""Logging out closes that session's open sockets, on every server process.

The logout (an HTTP request on any process) sends `chat.logout` to the user's group through the
channel layer; each process's hub closes its own sockets that authenticated with that session
(error `unauthenticated`, close 4401; apps.messaging.access). Sockets of the user's other
sessions and token sockets stay open. Only a SHA-256 of the session key crosses Redis, never
the key itself.

The same message, without `session`, carries a change of the user's rights (apps.users.rights):
with `code` it closes all the user's sockets with that code (4401 password changed, 4403
deactivated); with `version` alone each process re-checks the user's subscriptions.

With `token` (an apps.users.tokens id) it closes the sockets opened with that token (4401):
the token was revoked. A socket opened with an expiring token closes itself when it expires.
"""

from __future__ import annotations

import hashlib
import logging
import weakref

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib.auth.signals import user_logged_out
from django.dispatch import receiver

from apps.events.fanout import user_group

logger = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
LOGOUT_MESSAGE = "chat.logout"
# Connection -> hash of the session it authenticated with (token sockets are absent).
_session_of = weakref.WeakKeyDictionary()
# Connection -> the id of the API token (apps.users.tokens) it authenticated with.
_token_of = weakref.WeakKeyDictionary()


def session_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def remember(conn, scope) -> None:
    """Note the session (or API token) a socket authenticated with, so a logout (a token's
    revocation or expiry) can find it."""
    token = scope.get("api_token")
    if token is not None:
        _token_of[conn] = token.pk
        if token.expires_at is not None:
            _close_at_expiry(conn, token)
        return
    if scope.get("auth_method") != "session":
        return
    key = getattr(scope.get("session"), "session_key", None)
    if key:
        _session_of[conn] = session_hash(key)


def session_of(conn) -> str | None:
    """The hash of the session a socket authenticated with (None for token sockets)."""
    return _session_of.get(conn)


def token_of(conn) -> int | None:
    """The id of the API token (apps.users.tokens) a socket authenticated with, or None."""
    return _token_of.get(conn)


def _close(loop, conn, code: int, text: str) -> None:
    error = "unauthenticated" if code == CLOSE_UNAUTHENTICATED else "forbidden"
    conn.write_json({"type": "error", "ref": None, "code": error, "message": text})
    loop.create_task(conn.close(code))


def _close_at_expiry(conn, token) -> None:
    import asyncio

    from django.utils import timezone

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not on a server's loop: nothing to schedule
        return
    delay = max(0.0, (token.expires_at - timezone.now()).total_seconds())
    closed = weakref.ref(conn)

    def expire():
        alive = closed()
        if alive is not None and not alive.closing:
            _close(loop, alive, CLOSE_UNAUTHENTICATED, "the token expired")

    loop.call_later(delay, expire)


def close_user_sockets(user_id: int, *, reason: str) -> None:
    """Close every socket of the user (sessions and tokens), on every process (4401)."""
    notify_user(user_id, all=True, reason=reason)


def close_token_sockets(user_id: int, token_id: int) -> None:
    """Close the sockets opened with that API token, on every process (4401)."""
    notify_user(user_id, token=token_id, reason="the token was revoked")


def notify_user(user_id: int, **fields) -> None:
    """Send `chat.logout` with `fields` to every process holding a socket of the user (sync
    code: a request, a service, a signal). Redis down: logged, the caller's change stands."""
    layer = get_channel_layer()
    if layer is None:
        return

    group = user_group(user_id)
    try:
        async_to_sync(layer.group_send)(
            group, {"type": LOGOUT_MESSAGE, "via": group, "user": user_id, **fields}
        )
    except Exception:  # Redis down: the sockets' next action is refused (inactive account)
        logger.warning("could not reach the sockets of user %s", user_id, exc_info=True)


@receiver(user_logged_out, dispatch_uid="chat-close-session-sockets")
def on_logged_out(sender, request, user, **kwargs):
    """Runs before the session is flushed, so its key is still known."""
    key = getattr(getattr(request, "session", None), "session_key", None)
    if user is None or not key:
        return
    notify_user(user.pk, session=session_hash(key))
