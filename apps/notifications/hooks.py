"""The after-commit hook: a committed message that may mention someone wakes the mention
worker (apps.notifications.mentions). A pure test of the envelopes on the committing thread;
the Redis and broker calls run on the kick thread (apps.events.outbox.soon)."""

from __future__ import annotations

from django.conf import settings

from .mentions import has_candidate


def kick_key() -> str:
    return f"{settings.CHANNELS_PREFIX}:notify:kick"


def kick() -> None:
    from apps.events.outbox import enqueue_debounced

    from .tasks import notify_mentions

    enqueue_debounced(notify_mentions, kick_key(), settings.NOTIFY_KICK_DEBOUNCE_MS)


def on_events_committed(sender, items, **kwargs) -> None:
    if any(has_candidate(item[0]) for item in items):
        from apps.events.outbox import soon

        soon(kick)
