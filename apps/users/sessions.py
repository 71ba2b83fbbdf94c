"""Logging out closes that session's open sockets, on every server process.

The logout (an HTTP request on any process) sends `chat.logout` to the user's group through the
channel layer; each process's hub closes its own sockets that authenticated with that session
(error `unauthenticated`, close 4401). Sockets of the user's other sessions and token sockets stay
open. Only a SHA-256 of the session key crosses Redis, never the key itself.
"""

from __future__ import annotations

import hashlib
import logging
import weakref

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib.auth.signals import user_logged_out
from django.dispatch import receiver

logger = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4401
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


def close_session_sockets(hub, message: dict) -> int:
    """Hub handler of `chat.logout`: close this process's sockets of that session (of every
    session and token, with `all`)."""
    closed = 0
    for conn in list(hub.users.get(message.get("user"), ())):
        if message.get("all") or _session_of.get(conn) == message.get("session"):
            conn.write_json({"type": "error", "ref": None, "code": "unauthenticated",
                             "message": message.get("reason") or "the session was logged out"})
            hub.loop.create_task(conn.close(CLOSE_UNAUTHENTICATED))
            closed += 1
    return closed


def close_user_sockets(user_id: int, *, reason: str) -> None:
    """Close every socket of the user (sessions and tokens), on every process (4401)."""
    layer = get_channel_layer()
    if layer is None:
        return
    from apps.events.fanout import user_group

    group = user_group(user_id)
    try:
        async_to_sync(layer.group_send)(group, {
            "type": LOGOUT_MESSAGE, "via": group, "user": user_id, "all": True, "reason": reason,
        })
    except Exception:  # Redis down: the sockets' next action is refused (inactive account)
        logger.warning("could not close the user's sockets", exc_info=True)


@receiver(user_logged_out, dispatch_uid="chat-close-session-sockets")
def on_logged_out(sender, request, user, **kwargs):
    """Runs before the session is flushed, so its key is still known."""
    key = getattr(getattr(request, "session", None), "session_key", None)
    layer = get_channel_layer()
    if user is None or not key or layer is None:
        return
    from apps.events.fanout import user_group

    group = user_group(user.pk)
    try:
        async_to_sync(layer.group_send)(group, {
            "type": LOGOUT_MESSAGE, "via": group, "user": user.pk, "session": session_hash(key),
        })
    except Exception:  # Redis down: the logout itself still succeeds
        logger.warning("could not close the logged-out session's sockets", exc_info=True)
