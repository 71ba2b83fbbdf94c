"""The Kafka handler of the `notifications` consumer group (`consume_events --group
notifications`): optional since the mention worker reads the event log itself
(apps.notifications.mentions); kept for deployments that rebuild notifications from the
topic. Both make the same rows and skip what is there (nobody twice for one message)."""

from __future__ import annotations

from apps.events.handlers import Handler

from .mentions import mentioned_usernames, notify_event  # noqa: F401 (the parser's old home)
from .models import Notification


class MentionNotifications(Handler):
    """message.created / message.edited mentioning people -> Notifications (no live
    notification.created: the worker sends those); message.deleted removes the
    notifications of that message."""

    event_types = ("message.created", "message.edited", "message.deleted")

    def handle(self, envelope: dict) -> None:
        data = envelope["data"]
        if envelope["type"] == "message.deleted":
            Notification.objects.filter(room_id=envelope["room"], message_id=data["id"]).delete()
            return
        notify_event(envelope)
