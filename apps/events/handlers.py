"""Pluggable handlers for Kafka consumer groups (`python manage.py consume_events`).

A handler is a class with `event_types` (empty: every type) and `handle(envelope)`. The runner
calls `handle` inside a transaction that also records (group, event id) in ConsumedEvent, so
an event redelivered after a rebalance or a crash is skipped, and a handler that raises leaves
nothing behind and is retried.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction
from django.utils.module_loading import import_string

from .models import ConsumedEvent

logger = logging.getLogger(__name__)

HANDLED, DUPLICATE, IGNORED = "handled", "duplicate", "ignored"


class Handler:
    """Base class of consumer-group handlers."""

    event_types: tuple[str, ...] = ()

    def wants(self, envelope: dict) -> bool:
        return not self.event_types or envelope.get("type") in self.event_types

    def handle(self, envelope: dict) -> None:  # pragma: no cover - interface
        raise NotImplementedError


def handler_for(group: str, path: str | None = None) -> Handler:
    """The handler of a group: an explicit dotted path, or KAFKA_CONSUMER_HANDLERS[group]."""
    path = path or settings.KAFKA_CONSUMER_HANDLERS.get(group)
    if not path:
        known = ", ".join(sorted(settings.KAFKA_CONSUMER_HANDLERS)) or "none"
        raise ValueError(
            f"no handler for group {group!r} (configured groups: {known}); "
            "pass --handler dotted.path.Class"
        )
    try:
        cls = import_string(path)
    except ImportError as exc:
        raise ValueError(f"cannot import handler {path!r}: {exc}") from None
    handler = cls()
    if not callable(getattr(handler, "handle", None)):
        raise ValueError(f"{path} has no handle(envelope) method")
    return handler


def process(group: str, handler: Handler, envelope: dict) -> str:
    """Handle one event at most once per group. Returns HANDLED, DUPLICATE or IGNORED."""
    if not handler.wants(envelope):
        return IGNORED
    with transaction.atomic():
        # The unique (group, event_id) row is the dedupe: a concurrent or earlier handling of
        # the same id makes this a no-op (the insert waits for the other transaction).
        _, created = ConsumedEvent.objects.get_or_create(group=group, event_id=envelope["id"])
        if not created:
            return DUPLICATE
        handler.handle(envelope)
    return HANDLED
