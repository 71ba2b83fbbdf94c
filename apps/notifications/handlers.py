"""Kafka handlers that make notifications (`consume_events --group notifications`)."""

from __future__ import annotations

import re

from django.contrib.auth import get_user_model

from apps.events.handlers import Handler
from apps.rooms.models import Membership

from . import presence
from .models import Notification

# @username as Django's username validator allows it ([\w.@+-]); not inside a word or an email.
MENTION = re.compile(r"(?<![\w.@+-])@([\w.+-]{1,150})")
MAX_MENTIONS = 50
EXCERPT = 200


def mentioned_usernames(body: str) -> set[str]:
    """Candidate usernames of the @mentions in a body (sentence punctuation stripped too)."""
    names = set()
    for match in MENTION.finditer(body or ""):
        name = match.group(1)
        names.add(name)
        names.add(name.rstrip(".-+"))
        if len(names) >= MAX_MENTIONS:
            break
    names.discard("")
    return names


class MentionNotifications(Handler):
    """message.created with @username of a room member who is not online -> a Notification.

    message.deleted removes the notifications of that message.
    """

    event_types = ("message.created", "message.deleted")

    def handle(self, envelope: dict) -> None:
        data = envelope["data"]
        if envelope["type"] == "message.deleted":
            Notification.objects.filter(room_id=envelope["room"], message_id=data["id"]).delete()
            return
        names = mentioned_usernames(data.get("body", ""))
        if not names:
            return
        author_id = (envelope.get("actor") or {}).get("id")
        users = get_user_model().objects.filter(username__in=names, is_active=True)
        members = set(
            Membership.objects.active()
            .filter(room_id=envelope["room"], user__in=users)
            .values_list("user_id", flat=True)
        )
        notify = [uid for uid in sorted(members) if uid != author_id and not presence.is_online(uid)]
        Notification.objects.bulk_create(
            [
                Notification(
                    user_id=uid,
                    kind=Notification.Kind.MENTION,
                    event_id=envelope["id"],
                    room_id=envelope["room"],
                    seq=envelope["seq"],
                    message_id=data["id"],
                    actor_id=author_id,
                    excerpt=data["body"][:EXCERPT],
                )
                for uid in notify
            ],
            ignore_conflicts=True,
        )
