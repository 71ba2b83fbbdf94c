"""Sockets losing access while open: logouts, password changes, deactivations and any other
change of a user's rights (apps.users.sessions, apps.users.rights), heard on the channel layer
(`chat.logout`) or caught by the periodic version check."""

from __future__ import annotations

import logging

from apps.users import rights, sessions

from .dbpool import db
from .selectors import visible_rooms

logger = logging.getLogger(__name__)


class AccessWatch:
    """The access half of a hub: closes its sockets and ends its subscriptions."""

    def __init__(self, hub):
        self.hub = hub

    def close_sessions(self, message: dict) -> int:
        """`chat.logout`: close this process's sockets of that session (of every session and
        token, with `all`; of one API token, with `token`); without any, a rights change (see
        apps.users.sessions)."""
        hub = self.hub
        user_id = message.get("user")
        if "token" in message:  # an API token was revoked (apps.users.tokens): its sockets
            conns = [
                c for c in hub.users.get(user_id, ()) if sessions.token_of(c) == message["token"]
            ]
            for conn in conns:
                conn.write_json(
                    {
                        "type": "error",
                        "ref": None,
                        "code": "unauthenticated",
                        "message": message.get("reason") or "the token was revoked",
                    }
                )
                hub.loop.create_task(conn.close(sessions.CLOSE_UNAUTHENTICATED))
            return len(conns)
        if "session" not in message and not message.get("all"):
            if message.get("version") is not None:
                self.rights_changed(user_id, message["version"], closing=bool(message.get("code")))
            if not message.get("code"):
                return 0
        code = message.get("code") or sessions.CLOSE_UNAUTHENTICATED
        error = "unauthenticated" if code == sessions.CLOSE_UNAUTHENTICATED else "forbidden"
        text = message.get("reason") or "the session was logged out"
        closed = 0
        for conn in list(hub.users.get(user_id, ())):
            if "session" not in message or sessions.session_of(conn) == message.get("session"):
                conn.write_json({"type": "error", "ref": None, "code": error, "message": text})
                hub.loop.create_task(conn.close(code))
                closed += 1
        return closed

    def rights_changed(self, user_id: int, version: int, *, closing: bool = False):
        """The user's rights changed (on any process): note the version, so each socket
        reloads its user before its next frame, and end the subscriptions the user may no
        longer see (unless the sockets are being closed anyway)."""
        hub = self.hub
        if version <= hub.versions.get(user_id, -1):
            return
        hub.versions[user_id] = version
        if not closing and hub.users.get(user_id):
            hub.loop.create_task(self._recheck(user_id))

    async def _recheck(self, user_id: int):
        hub = self.hub
        conns = [c for c in hub.users.get(user_id, ()) if not c.closing]
        room_ids = {r for c in conns for r in c.subs}
        if not room_ids:
            return
        try:
            visible = await db(visible_rooms)(user_id, room_ids)
        except Exception:
            logger.warning("could not re-check the rooms of user %s", user_id, exc_info=True)
            return
        for conn in conns:
            if visible is None:  # deactivated or deleted meanwhile
                conn.write_json(
                    {
                        "type": "error",
                        "ref": None,
                        "code": "forbidden",
                        "message": "the account was deactivated",
                    }
                )
                await conn.close(sessions.CLOSE_FORBIDDEN)
                continue
            for room_id, sub in list(conn.subs.items()):
                if room_id not in visible:
                    hub.drop(sub)
                    conn.write_json(
                        {
                            "type": "unsubscribed",
                            "ref": None,
                            "room": room_id,
                            "reason": "forbidden",
                        }
                    )

    async def check_versions(self):
        """Catch rights changes whose channel-layer message this process missed."""
        hub = self.hub
        try:
            current = await rights.versions(list(hub.users))
        except Exception:  # Redis down: the next check catches up
            logger.warning("could not read the rights versions", exc_info=True)
            return
        for user_id, version in current.items():
            known = hub.versions.get(user_id)
            if known is None:
                hub.versions[user_id] = version
            elif version > known:
                self.rights_changed(user_id, version)
