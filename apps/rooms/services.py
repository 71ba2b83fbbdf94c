"""Every write to rooms and memberships: one function, one transaction, its permission check.

Each service locks the room row first (`lock_room`), so all writes to one room are serialized
and the room's seq follows commit order.
"""

from __future__ import annotations

from datetime import datetime

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.events import catalogue as ev
from apps.events.services import record_event
from chatproject.errors import AccountDisabled, forbidden, invalid, not_found
from chatproject.text import check_text

from .models import Membership, ModerationAction, Room

User = get_user_model()
MODERATE_PERMISSION = "rooms.moderate_room"
ROOM_NAME_MAX = 100
ROOM_TOPIC_MAX = 500


# --- Checks (read-only) -----------------------------------------------------------------------


def get_membership(room, user) -> Membership | None:
    """The user's membership row in the room (active or not), or None."""
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return Membership.objects.filter(room=room, user=user).first()


def is_site_moderator(user) -> bool:
    """Staff moderators (the Moderators group, superusers) may moderate every room."""
    return bool(user and user.is_active and user.is_staff and user.has_perm(MODERATE_PERMISSION))


def _visible(room, user, membership) -> bool:
    """The view rule, given the user's membership (read by the caller)."""
    if room.kind == Room.Kind.PUBLIC:
        return bool(user and user.is_authenticated)
    return bool(membership and membership.is_active) or is_site_moderator(user)


def can_view(room, user) -> bool:
    membership = None if room.kind == Room.Kind.PUBLIC else get_membership(room, user)
    return _visible(room, user, membership)


def check_can_view(room, user) -> None:
    """Private rooms look the same as missing ones to non-members (no existence leak)."""
    if not can_view(room, user):
        raise not_found("room not found")


def can_moderate(room, user) -> bool:
    membership = get_membership(room, user)
    return bool(membership and membership.is_moderator) or is_site_moderator(user)


def check_can_moderate(room, user) -> None:
    check_can_view(room, user)
    if not can_moderate(room, user):
        raise forbidden("only the room's owner or moderators may do this")


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


_READ = object()


def check_can_post(room, user, membership=_READ) -> Membership:
    """An active, unmuted, unbanned member of a room that is not archived.

    One query (membership joined with its user) on the hot path of every send, unless the
    caller read it already (`post_memberships`); it also refuses an account deactivated since
    the caller loaded it.
    """
    if membership is _READ:
        membership = None
        if user is not None and getattr(user, "is_authenticated", False):
            membership = post_memberships([room.pk], [user.pk]).get((room.pk, user.pk))
    if membership is not None and not membership.user.is_active:
        raise AccountDisabled()
    if not _visible(room, user, membership):
        raise not_found("room not found")  # same answer as a missing room
    if membership is None or not membership.is_active:
        if membership is not None and membership.is_banned():
            raise forbidden("you are banned from this room")
        raise forbidden("join the room first")
    check_not_archived(room)
    if membership.is_muted():
        raise forbidden("you are muted in this room")
    return membership


def lock_room(room_or_id) -> Room:
    """Lock the room row for the rest of the transaction and return it fresh."""
    room_id = getattr(room_or_id, "pk", room_or_id)
    try:
        return Room.objects.select_for_update().get(pk=room_id)
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
        membership.save()
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


def direct_room_open(*, user, other) -> Room:
    """The direct room of two people, created on first use."""
    if other is None or not other.is_active:
        raise not_found("user not found")
    if other.pk == user.pk:
        raise invalid("a direct room needs two different people")
    low, high = sorted([user.pk, other.pk])
    key = f"{low}:{high}"
    existing = Room.objects.filter(direct_key=key).first()
    if existing:
        return existing
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


def room_update(*, room, actor, name=None, topic=None) -> Room:
    """Rename the room or change its topic (owner and moderators)."""
    with transaction.atomic():
        room = lock_room(room)
        check_can_moderate(room, actor)
        check_not_archived(room)
        if room.kind == Room.Kind.DIRECT:
            raise forbidden("direct rooms cannot be renamed")
        changed = {}
        if name is not None and _clean_name(name) != room.name:
            room.name = changed["name"] = _clean_name(name)
        if topic is not None and _clean_topic(topic) != room.topic:
            room.topic = changed["topic"] = _clean_topic(topic)
        if changed:
            room.save(update_fields=list(changed))
            record_event(type="room.updated", room=room, actor=actor, data=ev.room_updated(changed))
    return room


def room_archive(*, room, actor, reason="") -> Room:
    """Make the room read-only for good (owner, moderators, site moderators)."""
    with transaction.atomic():
        room = lock_room(room)
        check_can_moderate(room, actor)
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


def room_leave(*, room, user) -> None:
    """Leave a room (a direct room cannot be left)."""
    with transaction.atomic():
        room = lock_room(room)
        check_can_view(room, user)
        membership = get_membership(room, user)
        if membership is None or not membership.is_active:
            raise invalid("you are not a member of this room")
        if room.kind == Room.Kind.DIRECT:
            raise forbidden("a direct room cannot be left")
        check_not_archived(room)
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
    """Make a member a moderator or a member again (the owner, or staff)."""
    if role not in (Membership.Role.MODERATOR, Membership.Role.MEMBER):
        raise invalid("role must be 'moderator' or 'member'")
    with transaction.atomic():
        room = lock_room(room)
        check_can_moderate(room, actor)
        check_not_archived(room)
        actor_membership = get_membership(room, actor)
        if not is_site_moderator(actor) and actor_membership.role != Membership.Role.OWNER:
            raise forbidden("only the owner can change roles")
        target = _target_membership(room, user)
        if not target.is_active:
            raise invalid("that user is not an active member")
        _check_outranks(room, actor, target)
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


def member_kick(*, room, actor, user, reason="") -> None:
    """Remove a member (they may join a public room again)."""
    with transaction.atomic():
        room = lock_room(room)
        check_can_moderate(room, actor)
        check_not_archived(room)
        target = _target_membership(room, user)
        if not target.is_active:
            raise invalid("that user is not an active member")
        _check_outranks(room, actor, target)
        target.is_active = False
        target.save(update_fields=["is_active"])
        record_event(type="member.left", room=room, actor=actor, data=ev.member_left(user))
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
    reason = (reason or "")[:500]
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
        target.is_active = False
        target.banned_at = timezone.now()
        target.banned_until = until
        target.ban_reason = reason
        target.save()
        record_event(
            type="member.banned",
            room=room,
            actor=actor,
            data=ev.member_banned(user, reason=reason, until=until),
        )
        _audit(room, actor, ModerationAction.Action.BAN, target_user=user, reason=reason,
               until=until.isoformat() if until else None)
        return target


def member_unban(*, room, actor, user, reason="") -> Membership:
    """Lift a ban; the user may join (public) or be invited (private) again."""
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
        _audit(room, actor, ModerationAction.Action.UNBAN, target_user=user, reason=reason)
        return target


def member_mute(*, room, actor, user, until=None, reason="") -> Membership:
    """Mute a member until a time (None lifts the mute)."""
    until = _clean_until(until)
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
            type="member.muted", room=room, actor=actor, data=ev.member_muted(user, until=until)
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


def mark_read(*, room, user, seq) -> "object | None":
    """Move the user's read position forward (never back); returns the receipt event or None."""
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise invalid("seq must be a non-negative integer")
    with transaction.atomic():
        membership = (
            Membership.objects.select_for_update().filter(room=room, user=user, is_active=True).first()
        )
        if membership is None:
            check_can_view(room, user)
            raise forbidden("join the room first")
        seq = min(seq, Room.objects.values_list("last_seq", flat=True).get(pk=room.pk))
        if seq <= membership.last_read_seq:
            return None
        membership.last_read_seq = seq
        membership.save(update_fields=["last_read_seq"])
        return record_event(
            type="receipt.updated",
            room=room,
            actor=user,
            data=ev.receipt_updated(user, last_read_seq=seq),
        )


def get_room_or_404(room_id, user) -> Room:
    """The room if the user may see it, else not_found (same answer for missing and private)."""
    try:
        room = Room.objects.get(pk=int(room_id))
    except (Room.DoesNotExist, TypeError, ValueError, OverflowError):
        raise not_found("room not found") from None
    check_can_view(room, user)
    return room

