"""The after-commit hook: a committed message that may mention someone wakes the mention
worker (apps.notifications.mentions). A pure test of the envelopes on the committing thread;
the Redis and broker calls run on the kick thread (apps.events.tasks.soon)."""

from __future__ import annotations

from apps.events.tasks import soon

from .mentions import has_candidate
from .tasks import kick


def on_events_committed(sender, items, **kwargs) -> None:
    if any(has_candidate(item[0]) for item in items):
        soon(kick)
