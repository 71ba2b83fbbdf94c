"""Reads of the event log and of who may follow what, for the socket hub (sync: they run in
the database thread pool, apps.messaging.hub.db)."""

from __future__ import annotations

from django.contrib.auth import get_user_model

from apps.core.errors import ServiceError
from apps.events.models import Event
from apps.rooms import services as rooms
from apps.rooms.models import Membership, Room


def events_after(room_id: int, after: int, upto: int | None = None, limit: int | None = None):
    """(seq, envelope) of the room's log with after < seq (<= upto), oldest first."""
    qs = Event.objects.filter(room_id=room_id).sequenced().since(after)
    if upto is not None:
        qs = qs.filter(seq__lte=upto)
    if limit is not None:
        qs = qs[:limit]
    return list(qs.values_list("seq", "envelope"))


def room_heads(room_ids) -> dict[int, int]:
    """room id -> last_seq, of the rooms that exist."""
    return dict(Room.objects.filter(pk__in=list(room_ids)).values_list("pk", "last_seq"))


def history_bounds(room_id: int) -> tuple[int, int] | None:
    """(last_seq, history_start) of a room, or None if it does not exist."""
    return Room.objects.filter(pk=room_id).values_list("last_seq", "history_start").first()


def replay(user, room_id, since, limit):
    """(first events, head, history_start) for a subscription, or ServiceError if the user
    may not follow.

    `limit` bounds the events read here; the rest of the replay is read a chunk at a time
    while it is written (Hub.subscribe), so a replay never holds all its events at once.
    The log is read before the permission check: a ban committed after the check has a seq
    above `head`, so it reaches the socket live (and ends the subscription there). A `since`
    below history_start (purged by retention) replays from history_start, not truncated.
    """
    head, history_start = history_bounds(room_id) or (None, 1)
    events = []
    if head is not None and since is not None and since < head:
        events = events_after(room_id, since, head, limit)
    rooms.check_can_read(rooms.get_room_or_404(room_id, user), user)
    return events, head, history_start


def visible_rooms(user_id, room_ids) -> set[int] | None:
    """The rooms among `room_ids` the user may follow now; None if the account is disabled."""
    user = get_user_model().objects.filter(pk=user_id, is_active=True).first()
    if user is None:
        return None
    visible = set()
    for room in Room.objects.filter(pk__in=list(room_ids)):
        try:
            rooms.check_can_read(room, user)
        except ServiceError:
            continue
        visible.add(room.pk)
    return visible


def shared_room_ids(user_ids) -> dict[int, list[int]]:
    """user id -> ids of the rooms where the user is an active member."""
    shared: dict[int, list[int]] = {u: [] for u in user_ids}
    pairs = Membership.objects.filter(user_id__in=list(user_ids)).active()
    for user_id, room_id in pairs.values_list("user_id", "room_id"):
        shared[user_id].append(room_id)
    return shared


def usernames(user_ids) -> dict[int, str]:
    """user id -> username."""
    return dict(get_user_model().objects.filter(pk__in=user_ids).values_list("pk", "username"))
