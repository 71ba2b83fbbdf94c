"""Logging out closes that session's open sockets, on every server process.

The logout (an HTTP request on any process) sends `chat.logout` to the user's group through the
channel layer; each process's hub closes its own sockets that authenticated with that session
(error `unauthenticated`, close 4401; apps.messaging.access). Sockets of the user's other
sessions and token sockets stay open. Only a SHA-256 of the session key crosses Redis, never
the key itself.

The same message, without `session`, carries a change of the user's rights (apps.users.rights):
with `code` it closes all the user's sockets with that code (4401 password changed, 4403
deactivated); with `version` alone each process re-checks the user's subscriptions.
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


def session_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def remember(conn, scope) -> None:
    """Note the session a socket authenticated with, so a logout can find it."""
    if scope.get("auth_method") != "session":
        return
    key = getattr(scope.get("session"), "session_key", None)
    if key:
        _session_of[conn] = session_hash(key)


def session_of(conn) -> str | None:
    """The hash of the session a socket authenticated with (None for token sockets)."""
    return _session_of.get(conn)


def close_user_sockets(user_id: int, *, reason: str) -> None:
    """Close every socket of the user (sessions and tokens), on every process (4401)."""
    notify_user(user_id, all=True, reason=reason)


def notify_user(user_id: int, **fields) -> None:
    """Send `chat.logout` with `fields` to every process holding a socket of the user (sync
    code: a request, a service, a signal). Redis down: logged, the caller's change stands."""
    layer = get_channel_layer()
    if layer is None:
        return

    group = user_group(user_id)
    try:
        async_to_sync(layer.group_send)(
            group, {"type": LOGOUT_MESSAGE, "via": group, "user": user_id, **fields})
    except Exception:  # Redis down: the sockets' next action is refused (inactive account)
        logger.warning("could not reach the sockets of user %s", user_id, exc_info=True)


@receiver(user_logged_out, dispatch_uid="chat-close-session-sockets")
def on_logged_out(sender, request, user, **kwargs):
    """Runs before the session is flushed, so its key is still known."""
    key = getattr(getattr(request, "session", None), "session_key", None)
    if user is None or not key:
        return
    notify_user(user.pk, session=session_hash(key))
