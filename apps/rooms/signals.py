"""Signals of the rooms app, for the apps above it (rooms imports none of them)."""

from django.dispatch import Signal

# Sent by mark_read inside its transaction, once the read position moved: room, user, seq.
# apps.notifications marks the room's notifications up to seq read in the same transaction.
room_read = Signal()
