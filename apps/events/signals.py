"""Signals of the event log."""

from django.dispatch import Signal

# Sent once a transaction's events are committed (apps.events.services.dispatch_events),
# in the process and thread that committed: `items` are (envelope, target user ids, JSON text
# or None). Receivers must be quick and must not block (hand slow work to apps.events.tasks.soon
# or a task): on the server they run on the send path's event loop or database thread.
events_committed = Signal()
