"""@mentions -> notifications, read from the committed event log.

Nothing here runs on the send path. After a commit that carries a message whose body has an
`@` in it, `kick` (apps.notifications.hooks) enqueues the `notify_mentions` task (debounced:
at most one queued at a time); Celery beat runs it every NOTIFY_SWEEP_SECONDS as well, so a
lost kick only delays notifications. The task reads, per room, the message.created and
message.edited events after the room's MentionCursor up to the room's committed last_seq
(every seq up to it is committed: seqs are allocated under the room lock), makes the
notifications and moves the cursors, in one transaction; after the commit each notified user
gets `notification.created` on their own sockets.

Rules (docs/protocol.md, Notifications):
- `@username` notifies that user, `@room` every member, `@here` the members online now (the
  presence store). Only room moderators (and site moderators) may use `@room` in rooms of more
  than ROOM_MENTION_MAX_MEMBERS members; from anyone else it is plain text there and notifies
  no one (the message itself is posted, as Mattermost does without the channel-mention right).
- Only active, unbanned members of the room are notified (who may read it), never the author,
  never someone who blocked the author, never a member whose level in the room is `none`.
- An edit notifies only the people its new text mentions and the previous text did not, and
  nobody twice for one message.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from django.db import connection, transaction
from django.db.models import F, OuterRef, Q, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from apps.events import catalogue
from apps.events.models import Event
from apps.events.services import after_commit

from . import presence
from .models import MentionCursor, Notification, RoomLevel

logger = logging.getLogger(__name__)

# @username as Django's username validator allows it ([\w.@+-]); not inside a word or an email.
MENTION = re.compile(r"(?<![\w.@+-])@([\w.+-]{1,150})")
MAX_MENTIONS = 50
EXCERPT = 200
ROOM, HERE = "room", "here"
ROOM_MENTION_MAX_MEMBERS = 50
CONTENT_TYPES = ("message.created", "message.edited")
ROOMS_PER_RUN = 500
EVENTS_PER_RUN = 5000
# The PostgreSQL advisory lock that makes one worker at a time move the cursors.
LOCK_KEY = 0x6E6F7469  # "noti"


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


@dataclass(frozen=True)
class Mentions:
    """What a body mentions: username keys (apps.users.models.username_key), @room, @here."""

    keys: frozenset
    room: bool = False
    here: bool = False

    def __bool__(self):
        return bool(self.keys or self.room or self.here)

    def minus(self, earlier: Mentions) -> Mentions:
        """The mentions this text adds to an earlier version of it."""
        return Mentions(
            self.keys - earlier.keys, self.room and not earlier.room, self.here and not earlier.here
        )


def parse(body) -> Mentions:
    from apps.users.models import username_key

    if not isinstance(body, str) or "@" not in body:
        return Mentions(frozenset())
    names = mentioned_usernames(body)
    lowered = {name.lower() for name in names}
    return Mentions(
        frozenset(username_key(name) for name in names if name.lower() not in (ROOM, HERE)),
        room=ROOM in lowered,
        here=HERE in lowered,
    )


def has_candidate(envelope: dict) -> bool:
    """Cheap test on a committed envelope: could it mention anyone? (For the after-commit kick.)"""
    if envelope.get("type") not in CONTENT_TYPES:
        return False
    body = (envelope.get("data") or {}).get("body")
    return isinstance(body, str) and "@" in body


# --- Who a mention notifies ----------------------------------------------------------------


def recipients(*, room_id: int, author_id, mentions: Mentions) -> dict[int, str]:
    """{user id: notification kind} for these mentions in this room by this author."""
    from apps.rooms.models import Membership
    from apps.users.models import Block

    if not mentions:
        return {}
    members = (
        Membership.objects.active()
        .filter(room_id=room_id, user__is_active=True)
        .exclude(pk__in=Membership.objects.banned().filter(room_id=room_id).values("pk"))
    )
    room_ok = mentions.room and _may_mention_room(room_id, author_id, members)
    rows = (
        members
        if (room_ok or mentions.here)
        else members.filter(user__username_key__in=mentions.keys)
    )
    users = dict(rows.values_list("user_id", "user__username_key"))
    users.pop(author_id, None)
    online = presence.online_ids(list(users)) if mentions.here and users else set()
    kinds: dict[int, str] = {}
    for user_id, key in users.items():
        if key in mentions.keys:
            kinds[user_id] = Notification.Kind.MENTION
        elif room_ok:
            kinds[user_id] = Notification.Kind.ROOM
        elif user_id in online:
            kinds[user_id] = Notification.Kind.HERE
    if not kinds:
        return {}
    silent = set(
        RoomLevel.objects.filter(
            room_id=room_id, user_id__in=kinds, level=RoomLevel.Level.NONE
        ).values_list("user_id", flat=True)
    )
    if author_id is not None:
        silent |= set(
            Block.objects.filter(blocker_id__in=kinds, blocked_id=author_id).values_list(
                "blocker_id", flat=True
            )
        )
    return {uid: kind for uid, kind in kinds.items() if uid not in silent}


def _may_mention_room(room_id, author_id, members) -> bool:
    """@room: anyone in rooms of at most ROOM_MENTION_MAX_MEMBERS, else only moderators."""
    from django.contrib.auth import get_user_model

    from apps.rooms.models import Membership
    from apps.rooms.services import is_room_moderator

    if members.count() <= ROOM_MENTION_MAX_MEMBERS:
        return True
    author = get_user_model().objects.filter(pk=author_id, is_active=True).first()
    if author is None:
        return False
    membership = Membership.objects.filter(room_id=room_id, user=author, is_active=True).first()
    return is_room_moderator(author, membership)


# --- The worker: the log after each room's cursor -> notifications -------------------------


def notify_event(envelope: dict, *, earlier_body=None) -> list[Notification]:
    """The notifications one committed message.created / message.edited event makes (unsaved
    rows are saved here). `earlier_body`: for an edit, the text before it (else read from
    the log)."""
    data = envelope.get("data") or {}
    body = data.get("body")
    mentions = parse(body)
    if not mentions:
        return []
    message_id = data.get("id")
    if envelope["type"] == "message.edited":
        if earlier_body is None:
            earlier_body = _earlier_body(envelope["room"], message_id, envelope["seq"])
        mentions = mentions.minus(parse(earlier_body))
        if not mentions:
            return []
    author_id = (envelope.get("actor") or {}).get("id")
    kinds = recipients(room_id=envelope["room"], author_id=author_id, mentions=mentions)
    if not kinds:
        return []
    # Nobody twice for one message (an edit, or the same event handled again).
    kinds = {
        uid: kind
        for uid, kind in kinds.items()
        if uid
        not in set(
            Notification.objects.filter(
                message_id=message_id, room_id=envelope["room"], user_id__in=kinds
            ).values_list("user_id", flat=True)
        )
    }
    now = timezone.now()
    rows = [
        Notification(
            user_id=uid,
            kind=kind,
            event_id=envelope["id"],
            room_id=envelope["room"],
            seq=envelope["seq"],
            message_id=message_id,
            actor_id=author_id,
            excerpt=body[:EXCERPT],
            created_at=now,
        )
        for uid, kind in sorted(kinds.items())
    ]
    created = Notification.objects.bulk_create(rows)
    for notification in created:  # for notification.created, without reading the user back
        notification.actor_ref = envelope.get("actor")
    return created


def _earlier_body(room_id, message_id, seq) -> str | None:
    envelope = (
        Event.objects.filter(
            message_id=message_id, room_id=room_id, type__in=CONTENT_TYPES, seq__lt=seq
        )
        .order_by("-seq")
        .values_list("envelope", flat=True)
        .first()
    )
    return ((envelope or {}).get("data") or {}).get("body")


def pending_rooms(limit=None) -> list[tuple[int, int, int]]:
    """(room id, cursor, last_seq) of the rooms whose log has events past their cursor."""
    from apps.rooms.models import Room

    cursor = MentionCursor.objects.filter(room_id=OuterRef("pk")).values("seq")[:1]
    return list(
        Room.objects.annotate(done=Coalesce(Subquery(cursor), Value(0)))
        .filter(last_seq__gt=F("done"))
        .order_by("pk")
        .values_list("pk", "done", "last_seq")[: limit or ROOMS_PER_RUN]
    )


@dataclass
class Run:
    rooms: int = 0
    events: int = 0
    notifications: int = 0
    more: bool = False


def process_pending() -> Run:
    """One pass of the worker (see the module docstring). Returns what it did; `more` when it
    stopped at ROOMS_PER_RUN rooms or EVENTS_PER_RUN events (call it again)."""
    run = Run()
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [LOCK_KEY])
        rooms = pending_rooms()
        if not rooms:
            return run
        run.more = len(rooms) >= ROOMS_PER_RUN
        heads = {room_id: last for room_id, _, last in rooms}
        ranges = Q()
        for room_id, done, last in rooms:
            ranges |= Q(room_id=room_id, seq__gt=done, seq__lte=last)
        events = list(
            Event.objects.filter(
                ranges, type__in=CONTENT_TYPES, envelope__data__body__icontains="@"
            )
            .order_by("room_id", "seq")
            .values_list("envelope", flat=True)[:EVENTS_PER_RUN]
        )
        if len(events) >= EVENTS_PER_RUN:  # stop after the last room read in full
            run.more = True
            last = events[-1]
            heads = {r: s for r, s in heads.items() if r < last["room"]}
            heads[last["room"]] = last["seq"]
            events = [e for e in events if e["room"] in heads and e["seq"] <= heads[e["room"]]]
        created = []
        for envelope in events:
            created += notify_event(envelope)
        _move_cursors(heads)
        run.rooms, run.events, run.notifications = len(heads), len(events), len(created)
        if created:
            after_commit(lambda: send_created(created))
    return run


def _move_cursors(heads: dict[int, int]) -> None:
    """One upsert for every room read (the advisory lock keeps other workers out)."""
    MentionCursor.objects.bulk_create(
        [MentionCursor(room_id=r, seq=s) for r, s in heads.items()],
        update_conflicts=True,
        unique_fields=["room"],
        update_fields=["seq"],
    )


def send_created(notifications) -> None:
    """notification.created to each notified user's own sockets (after the commit)."""
    from apps.events import fanout

    items = [(created_envelope(n), (n.user_id,), None) for n in notifications]
    try:
        fanout.dispatch_many(items)
    except Exception:  # noqa: BLE001 - Redis down: the list at /api/notifications/ has them
        logger.warning("notification.created fan-out failed", exc_info=True)


def created_envelope(notification) -> dict:
    actor = getattr(notification, "actor_ref", None)
    if actor is None and notification.actor_id is not None:
        actor = catalogue.actor_of(notification.actor)
    return catalogue.envelope(
        "notification.created",
        room_id=notification.room_id,
        seq=None,
        actor=actor,
        data=catalogue.notification_created(notification, actor=actor),
        ts=notification.created_at,
    )
