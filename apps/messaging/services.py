"""Every write to messages and reactions: one function, one transaction, its permission check.

Each service locks the room row first, so a room's writes are serialized and its seq follows
commit order. Each returns the committed Event (its `envelope` is what `ack` carries).
"""

from __future__ import annotations

import unicodedata
import uuid

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.events import catalogue as ev
from apps.events.models import Event
from apps.events.services import record_event
from apps.rooms import services as rooms
from apps.rooms.models import ModerationAction
from chatproject.errors import ServiceError, forbidden, invalid, not_found

from .models import Message, Reaction

EMOJI_MAX = 32


def clean_body(body) -> str:
    """Non-empty, at most CHAT_MESSAGE_MAX_LENGTH characters, no control characters."""
    if not isinstance(body, str):
        raise invalid("body must be a string")
    if not body.strip():
        raise invalid("body must not be empty")
    if len(body) > settings.CHAT_MESSAGE_MAX_LENGTH:
        raise ServiceError(
            "too_large", f"body is longer than {settings.CHAT_MESSAGE_MAX_LENGTH} characters"
        )
    for char in body:
        if char in "\n\t":
            continue
        if unicodedata.category(char) in ("Cc", "Cs") or char in "\u2028\u2029":
            raise invalid("body contains control characters")
    return body


def clean_emoji(emoji) -> str:
    if not isinstance(emoji, str) or not emoji or len(emoji) > EMOJI_MAX:
        raise invalid(f"emoji must be a string of 1 to {EMOJI_MAX} characters")
    if any(unicodedata.category(c) in ("Cc", "Cs", "Zs", "Zl", "Zp") for c in emoji):
        raise invalid("emoji must not contain spaces or control characters")
    return emoji


def clean_client_id(client_id) -> uuid.UUID:
    if isinstance(client_id, uuid.UUID):
        return client_id
    try:
        return uuid.UUID(str(client_id))
    except (ValueError, TypeError, AttributeError):
        raise invalid("client_id must be a UUID") from None


def created_event(message) -> Event:
    """The message.created event that recorded a message."""
    return Event.objects.get(room_id=message.room_id, seq=message.seq)


def get_message_or_404(message_id, user) -> Message:
    """A message the user may see, or not_found (same answer as a missing one)."""
    try:
        message = Message.objects.select_related("room").get(pk=int(message_id))
    except (Message.DoesNotExist, TypeError, ValueError, OverflowError):
        raise not_found("message not found") from None
    if not rooms.can_view(message.room, user):
        raise not_found("message not found")
    return message


def _sent_before(author, client_id) -> Message | None:
    return Message.objects.filter(author=author, client_id=client_id).only("room_id", "seq").first()


def message_send(*, room, author, body, client_id, reply_to=None) -> Event:
    """Post a message; idempotent on (author, client_id): a resend returns the original event.

    `room` is a Room or a room id. The hot path is four statements under the room lock (lock,
    membership, two inserts and the seq); a resend is found by the (author, client_id) unique
    constraint rather than by a query on every send.
    """
    body = clean_body(body)
    client_id = clean_client_id(client_id)
    try:
        with transaction.atomic():
            room = rooms.lock_room(room)
            try:
                rooms.check_can_post(room, author)
            except ServiceError:
                # A resend of a message that went through before a mute, ban or archive still
                # answers with the original (the contract: the same ack, nothing new).
                existing = _sent_before(author, client_id)
                if existing is not None:
                    return created_event(existing)
                raise
            reply = None
            if reply_to is not None:
                if isinstance(reply_to, bool) or not isinstance(reply_to, int):
                    raise invalid("reply_to must be a message id")
                reply = Message.objects.filter(pk=reply_to, room=room).only("id").first()
                if reply is None:
                    raise invalid("reply_to is not a message of this room")
            # We hold the room lock, so record_event hands out exactly last_seq + 1.
            message = Message.objects.create(
                room=room,
                author=author,
                body=body,
                client_id=client_id,
                reply_to=reply,
                seq=room.last_seq + 1,
            )
            event = record_event(
                type="message.created", room=room, actor=author, data=ev.message_created(message)
            )
            assert event.seq == message.seq, "seq allocated outside the room lock"
            return event
    except IntegrityError:
        # (author, client_id) exists: a resend. The transaction rolled back, so nothing new.
        existing = _sent_before(author, client_id)
        if existing is None:
            raise
        return created_event(existing)


def message_edit(*, message, actor, body) -> Event:
    """Change one's own message."""
    body = clean_body(body)
    with transaction.atomic():
        room = rooms.lock_room(message.room_id)
        message = Message.objects.get(pk=message.pk)
        rooms.check_can_view(room, actor)
        if message.author_id != actor.pk:
            raise forbidden("only the author can edit a message")
        if message.is_deleted:
            raise invalid("the message is deleted")
        rooms.check_can_post(room, actor)
        message.body = body
        message.edited_at = timezone.now()
        message.save(update_fields=["body", "edited_at"])
        return record_event(
            type="message.edited", room=room, actor=actor, data=ev.message_edited(message)
        )


def message_delete(*, message, actor, reason="") -> Event:
    """Delete a message: the author their own, moderators any (recorded in the audit trail)."""
    with transaction.atomic():
        room = rooms.lock_room(message.room_id)
        message = Message.objects.get(pk=message.pk)
        rooms.check_can_view(room, actor)
        if message.is_deleted:
            raise invalid("the message is already deleted")
        rooms.check_not_archived(room)
        by_moderator = message.author_id != actor.pk
        if by_moderator and not rooms.can_moderate(room, actor):
            raise forbidden("only the author or a moderator can delete a message")
        message.deleted_at = timezone.now()
        message.deleted_by = actor
        message.save(update_fields=["deleted_at", "deleted_by"])
        event = record_event(
            type="message.deleted",
            room=room,
            actor=actor,
            data=ev.message_deleted(message, by_moderator=by_moderator),
        )
        if by_moderator:
            ModerationAction.objects.create(
                room=room,
                actor=actor,
                target_user_id=message.author_id,
                target_message_id=message.pk,
                action=ModerationAction.Action.DELETE_MESSAGE,
                reason=(reason or "")[:500],
            )
        return event


def reaction_add(*, message, user, emoji) -> Event:
    """React to a message (once per user, message and emoji)."""
    emoji = clean_emoji(emoji)
    with transaction.atomic():
        room = rooms.lock_room(message.room_id)
        rooms.check_can_post(room, user)
        message = Message.objects.get(pk=message.pk)
        if message.is_deleted:
            raise invalid("the message is deleted")
        if Reaction.objects.filter(message=message, user=user, emoji=emoji).exists():
            raise invalid("you already reacted with this emoji")
        Reaction.objects.create(message=message, user=user, emoji=emoji)
        return record_event(
            type="reaction.added",
            room=room,
            actor=user,
            data=ev.reaction_added(message_id=message.pk, emoji=emoji),
        )


def reaction_remove(*, message, user, emoji) -> Event:
    """Take one's reaction back."""
    emoji = clean_emoji(emoji)
    with transaction.atomic():
        room = rooms.lock_room(message.room_id)
        rooms.check_can_view(room, user)
        rooms.check_not_archived(room)
        deleted, _ = Reaction.objects.filter(message=message, user=user, emoji=emoji).delete()
        if not deleted:
            raise invalid("you have not reacted with this emoji")
        return record_event(
            type="reaction.removed",
            room=room,
            actor=user,
            data=ev.reaction_removed(message_id=message.pk, emoji=emoji),
        )
