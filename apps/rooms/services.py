"""Every write to rooms and memberships: one function, one transaction, its permission check.

Each service locks the room row first (`lock_room`), so all writes to one room are serialized
and the room's seq follows commit order.

Why one module of ~700 lines: the authorization rules (the first section, one per room action)
and the writes that rely on them are read together, and every entry point (REST, socket,
admin, the send path) calls them from here. Its sections are the split points: the moderators'
actions (`member_set_role` to `member_mute`, with `_check_outranks`, `_clean_until`) go to a
module of their own once the branches that call them (tests, admin, moderation) have landed.
"""

from __future__ import annotations

import math
from datetime import datetime

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.core.errors import AccountDisabled, RateLimited, forbidden, invalid, not_found
from apps.core.text import check_text
from apps.events import catalogue as ev
from apps.events.services import record_event
from apps.users.models import Block
from apps.users.services import is_site_moderator

from .models import SLOW_MODE_MAX_SECONDS, Membership, ModerationAction, Room
from .signals import room_read

User = get_user_model()
ROOM_NAME_MAX = 100
ROOM_TOPIC_MAX = 500
OWNER = Membership.Role.OWNER


# --- The authorization rules, one per room action (read-only) ---------------------------------
#
# view       open the room and see it listed          RoomQuerySet.visible_to / room_visible
# read       history, events, members, reactions      check_can_read (view, and not banned)
# post       write anything in the room (edit, react)  check_can_post (active, unmuted, ...)
# send       post a new message                        check_can_send (post, post policy, slow mode)
# moderate   act on members, settings                  check_can_moderate
# own        archive, hand ownership on                check_is_owner
#
# REST views, the WebSocket consumer, the admin and the services call these and nothing else.


def get_membership(room, user) -> Membership | None:
    """The user's membership row in the room (active or not), or None."""
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return Membership.objects.filter(room=room, user=user).first()


def room_visible(room, user, membership) -> bool:
    """The room-view rule of `RoomQuerySet.visible_to`, for one room whose membership of the
    user the caller has read already (tests/rooms/test_rules.py checks that they agree)."""
    if not user or not user.is_authenticated:
        return False
    if room.kind == Room.Kind.PUBLIC:
        return True
    return bool(membership and membership.is_active) or is_site_moderator(user)


def can_view(room, user) -> bool:
    return Room.objects.visible_to(user).filter(pk=room.pk).exists()


def check_can_view(room, user) -> None:
    """Private rooms look the same as missing ones to non-members (no existence leak)."""
    if not can_view(room, user):
        raise not_found("room not found")


_UNREAD = object()


def check_can_read(
    room, user, *, missing="room not found", membership=_UNREAD
) -> Membership | None:
    """Read the room's messages, events, members and reactions: the view rule, and no ban.

    A user banned from a public room gets `forbidden`; from a private room (where a ban ends
    the membership) `not_found` with the `missing` text, like any outsider. `membership`: the
    user's row (or None) if the caller read it already.
    """
    if membership is _UNREAD:
        membership = get_membership(room, user)
    if not room_visible(room, user, membership):
        raise not_found(missing)
    if membership is not None and membership.is_banned() and not is_site_moderator(user):
        raise forbidden("you are banned from this room")
    return membership


def can_moderate(room, user, membership=_UNREAD) -> bool:
    if membership is _UNREAD:
        membership = get_membership(room, user)
    return bool(membership and membership.is_moderator) or is_site_moderator(user)


def check_can_moderate(room, user) -> None:
    """Act on members and the room's settings: its owners and moderators, site moderators."""
    membership = check_can_read(room, user)
    if not (membership and membership.is_moderator) and not is_site_moderator(user):
        raise forbidden("only the room's owner or moderators may do this")


def check_is_owner(room, user) -> None:
    """Owner-only actions (archive the room, make someone owner): owners and site moderators."""
    membership = check_can_read(room, user)
    owner = bool(membership and membership.is_active and membership.role == OWNER)
    if not owner and not is_site_moderator(user):
        raise forbidden("only the room's owner may do this")


def check_not_archived(room) -> None:
    if room.is_archived:
        raise forbidden("the room is archived and read-only")


def post_memberships(room_ids, user_ids) -> dict[tuple[int, int], Membership]:
    """{(room id, user id): membership joined with its user}, in one query: what
    `check_can_post` needs, read for many sends at once."""
    rows = Membership.objects.select_related("user").filter(
        room_id__in=room_ids, user_id__in=user_ids
    )
    return {(m.room_id, m.user_id): m for m in rows}


def blocked_senders(rooms, user_ids) -> set[tuple[int, int]]:
    """{(direct room id, user id)} where the room's other member has blocked the user: one
    query for many sends (the PostgreSQL send path reads the same in its pipeline)."""
    pairs = {}
    for room in rooms:
        if room.kind == Room.Kind.DIRECT and room.direct_key:
            low, high = (int(part) for part in room.direct_key.split(":"))
            for user_id in (low, high):
                if user_id in user_ids:
                    pairs[(high if user_id == low else low, user_id)] = room.pk
    if not pairs:
        return set()
    rows = Block.objects.filter(
        blocker_id__in={b for b, _ in pairs}, blocked_id__in={u for _, u in pairs}
    ).values_list("blocker_id", "blocked_id")
    return {(pairs[pair], pair[1]) for pair in rows if pair in pairs}


_READ = object()


def check_can_post(room, user, membership=_READ, *, blocked=_READ) -> Membership:
    """Write in the room (post, edit one's own, react): an active, unmuted, unbanned member
    of a room that is not archived, not blocked by the other person of a direct room.

    One query (membership joined with its user) on the hot path of every send, unless the
    caller read it already (`post_memberships`, `blocked_senders`); it also refuses an
    account deactivated since the caller loaded it.
    """
    if membership is _READ:
        membership = None
        if user is not None and getattr(user, "is_authenticated", False):
            membership = post_memberships([room.pk], [user.pk]).get((room.pk, user.pk))
    if membership is not None and not membership.user.is_active:
        raise AccountDisabled()
    if not room_visible(room, user, membership):
        raise not_found("room not found")  # same answer as a missing room
    if membership is None or not membership.is_active:
        if membership is not None and membership.is_banned():
            raise forbidden("you are banned from this room")
        raise forbidden("join the room first")
    check_not_archived(room)
    if membership.is_muted():
        raise forbidden("you are muted in this room")
    if blocked is _READ:
        blocked = bool(blocked_senders([room], {user.pk}))
    if blocked:
        raise forbidden("this person has blocked you")
    return membership


def is_room_moderator(user, membership) -> bool:
    """The room's owner and moderators, and site moderators (exempt from slow mode and the
    post policy)."""
    return bool(membership and membership.is_moderator) or is_site_moderator(user)


def check_post_policy(room, user, membership) -> None:
    """Announcement rooms (post policy `moderators`): only moderators post."""
    if room.post_policy == Room.PostPolicy.MODERATORS and not is_room_moderator(user, membership):
        raise forbidden("only the room's moderators may post here")


def check_can_send(room, user, membership=_READ, *, blocked=_READ, now=None) -> Membership:
    """Post a new message: the post rule, the post policy, and slow mode (at most one
    message per `slow_mode_seconds` for members who are not moderators; `rate_limited`
    with `retry_after`). The caller holds the room lock, so two sends cannot both pass."""
    membership = check_can_post(room, user, membership, blocked=blocked)
    check_post_policy(room, user, membership)
    if (
        room.slow_mode_seconds
        and membership.last_posted_at
        and not is_room_moderator(user, membership)
    ):
        now = now or timezone.now()
        wait = (membership.last_posted_at - now).total_seconds() + room.slow_mode_seconds
        if wait > 0:
            raise RateLimited(
                f"slow mode: one message every {room.slow_mode_seconds} s in this room",
                retry_after=math.ceil(wait),
            )
    return membership


def stamps_posts(room, user, membership) -> bool:
    """Whether a send must record the member's post time (slow mode applies to them)."""
    return bool(room.slow_mode_seconds) and not is_room_moderator(user, membership)


def lock_room(room_or_id) -> Room:
    """Lock the room row for the rest of the transaction and return it fresh.

    FOR NO KEY UPDATE: it serialises the room's writers as FOR UPDATE would, but lets the
    foreign-key checks of rows that point at the room through (FOR KEY SHARE, at COMMIT). A
    transaction holding a membership row and inserting an event (mark_read) would otherwise
    deadlock with a moderation holding the room and updating that membership
    (tests/rooms/test_locks.py)."""
    room_id = getattr(room_or_id, "pk", room_or_id)
    try:
        return Room.objects.select_for_update(no_key=True).get(pk=room_id)
    except Room.DoesNotExist:
        raise not_found("room not found") from None


def _clean_name(name) -> str:
    if not isinstance(name, str) or not name.strip():
        raise invalid("name must be a non-empty string")
    name = name.strip()
    if len(name) > ROOM_NAME_MAX:
        raise invalid(f"name is longer than {ROOM_NAME_MAX} characters")
    check_text(name, "name", multiline=False)
    return name


def _clean_topic(topic) -> str:
    if topic is None:
        return ""
    if not isinstance(topic, str):
        raise invalid("topic must be a string")
    if len(topic) > ROOM_TOPIC_MAX:
        raise invalid(f"topic is longer than {ROOM_TOPIC_MAX} characters")
    # A topic may be cleared (blank); one that is set must show something.
    check_text(topic, "topic", multiline=True, allow_blank=not topic.strip())
    return topic


def _audit(room, actor, action, *, target_user=None, message_id=None, reason="", **details):
    ModerationAction.objects.create(
        room=room,
        actor=actor,
        action=action,
        target_user=target_user,
        target_message_id=message_id,
        reason=reason or "",
        details=details,
    )


def _join_event(room, membership, actor):
    # Someone added by another person (invite, new room, direct room) also gets the event on
    # their own sockets, so their room list updates live before they subscribe to the room.
    invited = () if actor is None or actor.pk == membership.user_id else (membership.user_id,)
    record_event(
        type="member.joined",
        room=room,
        actor=actor,
        data=ev.member_joined(membership),
        target_user_ids=invited,
    )


# The membership fields a (re)join and a ban write; never the whole row (see member_ban).
REJOIN_FIELDS = ["is_active", "role", "joined_at", "banned_at", "banned_until", "ban_reason"]
BAN_FIELDS = ["is_active", "banned_at", "banned_until", "ban_reason"]


def _add_member(room, user, *, role, actor) -> Membership:
    membership, created = Membership.objects.get_or_create(
        room=room, user=user, defaults={"role": role}
    )
    if not created:
        if membership.is_active:
            return membership
        if membership.is_banned():
            raise forbidden("that user is banned from this room")
        membership.is_active = True
        membership.role = role
        membership.joined_at = timezone.now()
        membership.banned_at = membership.banned_until = None
        membership.ban_reason = ""
        membership.save(update_fields=REJOIN_FIELDS)
    _join_event(room, membership, actor)
    return membership


# --- Rooms ------------------------------------------------------------------------------------


def room_create(*, creator, name, kind=Room.Kind.PUBLIC, topic="", member_ids=()) -> Room:
    """Create a public or private room; the creator becomes its owner."""
    if kind not in (Room.Kind.PUBLIC, Room.Kind.PRIVATE):
        raise invalid("kind must be 'public' or 'private' (use direct_room_open for direct rooms)")
    name, topic = _clean_name(name), _clean_topic(topic)
    member_ids = list(member_ids or ())
    if any(isinstance(i, bool) or not isinstance(i, int) or not 0 < i < 2**63 for i in member_ids):
        raise invalid("members must be a list of user ids")
    invitees = list(User.objects.filter(pk__in=set(member_ids) - {creator.pk}, is_active=True))
    if len(invitees) != len(set(member_ids) - {creator.pk}):
        raise invalid("unknown user in members")
    with transaction.atomic():
        room = Room.objects.create(name=name, topic=topic, kind=kind, created_by=creator)
        room = lock_room(room)
        record_event(type="room.created", room=room, actor=creator, data=ev.room_created(room))
        _add_member(room, creator, role=Membership.Role.OWNER, actor=creator)
        for user in invitees:
            _add_member(room, user, role=Membership.Role.MEMBER, actor=creator)
    return room


def check_can_open_direct(user, other) -> None:
    """The direct-room rule: `other` has not blocked `user`, and their `dm_policy` lets
    `user` in (anyone; people sharing a public or private room with them; nobody)."""
    if Block.objects.filter(blocker=other, blocked=user).exists():
        raise forbidden("this person has blocked you")
    if is_site_moderator(user):
        return  # staff can always reach someone (Zulip and Mattermost admins can)
    policy = other.dm_policy
    if policy == User.DmPolicy.NOBODY:
        raise forbidden("this person does not accept direct messages")
    if policy == User.DmPolicy.SHARED_ROOMS:
        shared = (
            Membership.objects.active()
            .filter(user=other, room__memberships__user=user, room__memberships__is_active=True)
            .exclude(room__kind=Room.Kind.DIRECT)
        )
        if not shared.exists():
            raise forbidden("this person accepts direct messages only from people in their rooms")


def direct_room_open(*, user, other) -> Room:
    """The direct room of two people, created on first use.

    Opening it (new or existing) follows `check_can_open_direct`, except that a blocker may
    still open the room of someone they blocked (to read it; they may post, the blocked side
    may not).
    """
    if other is None or not other.is_active:
        raise not_found("user not found")
    if other.pk == user.pk:
        raise invalid("a direct room needs two different people")
    low, high = sorted([user.pk, other.pk])
    key = f"{low}:{high}"
    existing = Room.objects.filter(direct_key=key).first()
    if existing and Membership.objects.active().filter(room=existing, user=user).exists():
        if Block.objects.filter(blocker=other, blocked=user).exists():
            raise forbidden("this person has blocked you")
        return existing
    check_can_open_direct(user, other)
    if existing:  # a member removed before kicks were refused in direct rooms comes back
        with transaction.atomic():
            room = lock_room(existing)
            _add_member(room, user, role=Membership.Role.MEMBER, actor=user)
        return room
    try:
        with transaction.atomic():
            room = Room.objects.create(
                name=f"{user.username}, {other.username}",
                kind=Room.Kind.DIRECT,
                direct_key=key,
                created_by=user,
            )
            room = lock_room(room)
            record_event(type="room.created", room=room, actor=user, data=ev.room_created(room))
            _add_member(room, user, role=Membership.Role.MEMBER, actor=user)
            _add_member(room, other, role=Membership.Role.MEMBER, actor=user)
    except IntegrityError:  # the other side opened it at the same moment
        return Room.objects.get(direct_key=key)
    return room


def _clean_slow_mode(seconds) -> int:
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        raise invalid("slow_mode_seconds must be an integer")
    if not 0 <= seconds <= SLOW_MODE_MAX_SECONDS:
        raise invalid(f"slow_mode_seconds must be between 0 and {SLOW_MODE_MAX_SECONDS}")
    return seconds


def _clean_post_policy(policy) -> str:
    if policy not in Room.PostPolicy.values:
        raise invalid("post_policy must be 'everyone' or 'moderators'")
    return policy


UNCHANGED = object()  # room_update: a field that is not being changed (None is a value)
RETENTION_DAYS_MAX = 36500


def _clean_retention_days(days) -> int | None:
    if days is None:
        return None
    if isinstance(days, bool) or not isinstance(days, int):
        raise invalid("retention_days must be an integer or null")
    if not 1 <= days <= RETENTION_DAYS_MAX:
        raise invalid(f"retention_days must be between 1 and {RETENTION_DAYS_MAX}, or null")
    return days


def room_update(
    *,
    room,
    actor,
    name=None,
    topic=None,
    slow_mode_seconds=None,
    post_policy=None,
    retention_days=UNCHANGED,
) -> Room:
    """Rename the room, change its topic, slow mode, post policy or retention (owner and
    moderators). `retention_days=None` returns the room to the site default (RETENTION_DAYS)."""
    with transaction.atomic():
        room = lock_room(room)
        check_can_moderate(room, actor)
        check_not_archived(room)
        if room.kind == Room.Kind.DIRECT:
            raise forbidden("direct rooms cannot be changed")
        changed = {}
        if name is not None and _clean_name(name) != room.name:
            room.name = changed["name"] = _clean_name(name)
        if topic is not None and _clean_topic(topic) != room.topic:
            room.topic = changed["topic"] = _clean_topic(topic)
        if slow_mode_seconds is not None and (
            _clean_slow_mode(slow_mode_seconds) != room.slow_mode_seconds
        ):
            room.slow_mode_seconds = changed["slow_mode_seconds"] = slow_mode_seconds
        if post_policy is not None and _clean_post_policy(post_policy) != room.post_policy:
            room.post_policy = changed["post_policy"] = post_policy
        if retention_days is not UNCHANGED:
            days = _clean_retention_days(retention_days)
            if days != room.retention_days:
                room.retention_days = changed["retention_days"] = days
        if changed:
            room.save(update_fields=list(changed))
            record_event(type="room.updated", room=room, actor=actor, data=ev.room_updated(changed))
    return room


def room_archive(*, room, actor, reason="") -> Room:
    """Make the room read-only for good (its owners and site moderators, not moderators)."""
    with transaction.atomic():
        room = lock_room(room)
        check_is_owner(room, actor)
        check_not_archived(room)
        room.archived_at = timezone.now()
        room.save(update_fields=["archived_at"])
        record_event(type="room.archived", room=room, actor=actor, data=ev.room_archived())
        _audit(room, actor, ModerationAction.Action.ARCHIVE, reason=reason)
    return room


# --- Membership -------------------------------------------------------------------------------


def room_join(*, room, user) -> Membership:
    """Join a public room. Private rooms need an invitation; banned users cannot rejoin."""
    with transaction.atomic():
        room = lock_room(room)
        check_can_view(room, user)
        membership = get_membership(room, user)
        if membership and membership.is_active:
            return membership
        if membership and membership.is_banned():
            raise forbidden("you are banned from this room")
        check_not_archived(room)
        if room.kind != Room.Kind.PUBLIC:
            raise forbidden("this room is invite only")
        return _add_member(room, user, role=Membership.Role.MEMBER, actor=user)


def _check_keeps_an_owner(room, target: Membership, what: str) -> None:
    """A room always has an owner: its last one cannot leave, be removed or be demoted
    before making someone else owner (as Slack and Mattermost keep a channel's last admin)."""
    if target.role != OWNER or not target.is_active:
        return
    others = Membership.objects.active().in_room(room).filter(role=OWNER).exclude(pk=target.pk)
    if not others.exists():
        raise forbidden(f"the room's last owner cannot {what}: make another member owner first")


def room_leave(*, room, user) -> None:
    """Leave a room (a direct room cannot be left; the last owner hands ownership on first)."""
    with transaction.atomic():
        room = lock_room(room)
        check_can_read(room, user)
        membership = get_membership(room, user)
        if membership is None or not membership.is_active:
            raise invalid("you are not a member of this room")
        if room.kind == Room.Kind.DIRECT:
            raise forbidden("a direct room cannot be left")
        check_not_archived(room)
        _check_keeps_an_owner(room, membership, "leave")
        membership.is_active = False
        membership.save(update_fields=["is_active"])
        record_event(type="member.left", room=room, actor=user, data=ev.member_left(user))


def room_invite(*, room, actor, user) -> Membership:
    """Add someone to a private or public room (owner and moderators)."""
    with transaction.atomic():
        room = lock_room(room)
        check_can_moderate(room, actor)
        check_not_archived(room)
        if room.kind == Room.Kind.DIRECT:
            raise forbidden("nobody can be invited to a direct room")
        if user is None or not user.is_active:
            raise not_found("user not found")
        return _add_member(room, user, role=Membership.Role.MEMBER, actor=actor)


def _target_membership(room, user) -> Membership:
    membership = get_membership(room, user)
    if membership is None:
        raise not_found("that user is not a member of this room")
    return membership


def _check_outranks(room, actor, target: Membership) -> None:
    """Moderators cannot act on the owner or other moderators; only owners and staff can."""
    if target.user_id == getattr(actor, "pk", None):
        raise forbidden("you cannot do this to yourself")
    if is_site_moderator(actor):
        return
    actor_membership = get_membership(room, actor)
    if target.role == Membership.Role.OWNER:
        raise forbidden("the owner cannot be moderated")
    if target.role == Membership.Role.MODERATOR and actor_membership.role != Membership.Role.OWNER:
        raise forbidden("only the owner can moderate a moderator")


def member_set_role(*, room, actor, user, role) -> Membership:
    """Make a member an owner, a moderator or a member again (the owner, or staff).

    An owner may make others owners too (to hand the room on before leaving); only a site
    moderator can demote an owner, and never the last one.
    """
    if role not in Membership.Role.values:
        raise invalid("role must be 'owner', 'moderator' or 'member'")
    with transaction.atomic():
        room = lock_room(room)
        check_is_owner(room, actor)
        check_not_archived(room)
        if room.kind == Room.Kind.DIRECT:
            raise forbidden("a direct room has no roles")
        target = _target_membership(room, user)
        if not target.is_active:
            raise invalid("that user is not an active member")
        _check_outranks(room, actor, target)
        if role != OWNER:
            _check_keeps_an_owner(room, target, "be demoted")
        if target.role != role:
            target.role = role
            target.save(update_fields=["role"])
            record_event(
                type="member.role_changed",
                room=room,
                actor=actor,
                data=ev.member_role_changed(target),
            )
            _audit(room, actor, ModerationAction.Action.ROLE, target_user=user, role=role)
        return target


def _clean_reason(reason) -> str:
    if reason is None:
        return ""
    if not isinstance(reason, str):
        raise invalid("reason must be a string")
    return reason.strip()[:500]


def member_kick(*, room, actor, user, reason="") -> None:
    """Remove a member (they may join a public room again; nobody leaves a direct room)."""
    reason = _clean_reason(reason)
    with transaction.atomic():
        room = lock_room(room)
        check_can_moderate(room, actor)
        check_not_archived(room)
        if room.kind == Room.Kind.DIRECT:
            # Nobody could ever bring them back (a direct room takes no invitations): the
            # person who does not want the other blocks them instead.
            raise forbidden("nobody can be removed from a direct room (block the user instead)")
        target = _target_membership(room, user)
        if not target.is_active:
            raise invalid("that user is not an active member")
        _check_outranks(room, actor, target)
        _check_keeps_an_owner(room, target, "be removed")
        target.is_active = False
        target.save(update_fields=["is_active"])
        record_event(
            type="member.left", room=room, actor=actor, data=ev.member_left(user, reason=reason)
        )
        _audit(room, actor, ModerationAction.Action.KICK, target_user=user, reason=reason)


def _clean_until(until) -> datetime | None:
    if until is None:
        return None
    if not isinstance(until, datetime):
        raise invalid("until must be a date-time")
    if timezone.is_naive(until):
        raise invalid("until must carry a time zone")
    if until <= timezone.now():
        raise invalid("until must be in the future")
    return until


def member_ban(*, room, actor, user, reason="", until=None) -> Membership:
    """Ban a user from the room (optionally until a time): removed at once, cannot rejoin."""
    until = _clean_until(until)
    reason = _clean_reason(reason)
    with transaction.atomic():
        room = lock_room(room)
        check_can_moderate(room, actor)
        check_not_archived(room)
        if room.kind == Room.Kind.DIRECT:
            raise forbidden("nobody can be banned from a direct room")
        target = get_membership(room, user)
        if target is None:
            target = Membership(room=room, user=user, is_active=False)
        else:
            _check_outranks(room, actor, target)
            _check_keeps_an_owner(room, target, "be banned")
        target.is_active = False
        target.banned_at = timezone.now()
        target.banned_until = until
        target.ban_reason = reason
        # Only what the ban changes: mark_read moves last_read_seq without the room lock, and
        # a whole-row save would write back the value read before it committed.
        target.save(update_fields=None if target.pk is None else BAN_FIELDS)
        record_event(
            type="member.banned",
            room=room,
            actor=actor,
            data=ev.member_banned(user, reason=reason, until=until),
        )
        _audit(
            room,
            actor,
            ModerationAction.Action.BAN,
            target_user=user,
            reason=reason,
            until=until.isoformat() if until else None,
        )
        return target


def member_unban(*, room, actor, user, reason="") -> Membership:
    """Lift a ban; the user may join (public) or be invited (private) again.

    `member.unbanned` goes to the room and to the user's own sockets (their room list)."""
    reason = _clean_reason(reason)
    with transaction.atomic():
        room = lock_room(room)
        check_can_moderate(room, actor)
        check_not_archived(room)
        target = _target_membership(room, user)
        if target.banned_at is None:
            raise invalid("that user is not banned")
        target.banned_at = target.banned_until = None
        target.ban_reason = ""
        target.save(update_fields=["banned_at", "banned_until", "ban_reason"])
        record_event(
            type="member.unbanned",
            room=room,
            actor=actor,
            data=ev.member_unbanned(user, reason=reason),
        )
        _audit(room, actor, ModerationAction.Action.UNBAN, target_user=user, reason=reason)
        return target


def member_mute(*, room, actor, user, until=None, reason="") -> Membership:
    """Mute a member until a time (None lifts the mute)."""
    until = _clean_until(until)
    reason = _clean_reason(reason)
    with transaction.atomic():
        room = lock_room(room)
        check_can_moderate(room, actor)
        check_not_archived(room)
        target = _target_membership(room, user)
        if not target.is_active:
            raise invalid("that user is not an active member")
        _check_outranks(room, actor, target)
        target.muted_until = until
        target.save(update_fields=["muted_until"])
        record_event(
            type="member.muted",
            room=room,
            actor=actor,
            data=ev.member_muted(user, until=until, reason=reason),
        )
        _audit(
            room,
            actor,
            ModerationAction.Action.MUTE if until else ModerationAction.Action.UNMUTE,
            target_user=user,
            reason=reason,
            until=until.isoformat() if until else None,
        )
        return target


def mark_read(*, room, user, seq) -> object | None:
    """Move the user's read position forward (never back); returns the receipt event or None."""
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise invalid("seq must be a non-negative integer")
    with transaction.atomic():
        membership = (
            Membership.objects.select_for_update()
            .filter(room=room, user=user, is_active=True)
            .first()
        )
        if membership is None:
            check_can_read(room, user)
            raise forbidden("join the room first")
        seq = min(seq, Room.objects.values_list("last_seq", flat=True).get(pk=room.pk))
        if seq <= membership.last_read_seq:
            return None
        membership.last_read_seq = seq
        membership.save(update_fields=["last_read_seq"])
        room_read.send(sender=Room, room=room, user=user, seq=seq)
        return record_event(
            type="receipt.updated",
            room=room,
            actor=user,
            data=ev.receipt_updated(user, last_read_seq=seq),
        )


def get_room_or_404(room_id, user) -> Room:
    """The room if the user may see it (the view rule, `visible_to`), else not_found: the
    same answer for a missing room and a private one."""
    try:
        return Room.objects.visible_to(user).get(pk=int(room_id))
    except (Room.DoesNotExist, TypeError, ValueError, OverflowError):
        raise not_found("room not found") from None
