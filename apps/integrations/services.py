"""Writes to webhooks (PROTOCOL §10): incoming webhooks per room, outgoing webhooks and their
cursors. Delivery itself is apps.integrations.delivery."""

from __future__ import annotations

import hmac
import math
import secrets
import uuid

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import F

from apps.core.errors import RateLimited, ServiceError, forbidden, invalid, not_found
from apps.events.catalogue import CATALOGUE
from apps.rooms import services as rooms
from apps.rooms.models import Room
from apps.users import ratelimit
from apps.users.services import clean_username
from apps.users.tokens import digest

from . import ssrf
from .models import IncomingWebhook, OutgoingWebhook, WebhookCursor

User = get_user_model()
KEY_ID_LENGTH = 12
# Types an outgoing webhook may carry: the room log's (seq'd) events.
LOG_TYPES = tuple(t for t, spec in CATALOGUE.items() if spec.seq)
SECRET_MIN, SECRET_MAX = 16, 200
INCOMING_PER_ROOM = 20
_IDEMPOTENCY = uuid.UUID("6f1d3c62-5b0e-4f55-9d0e-2f4c8c1e7a10")  # uuid5 namespace


# --- Incoming ---------------------------------------------------------------------------------


def _room_bot(room, creator):
    """The room's webhook bot (one per room, made with its first webhook)."""
    existing = IncomingWebhook.objects.filter(room=room).select_related("bot").first()
    if existing is not None:
        return existing.bot
    base = f"webhook-{room.pk}"
    for attempt in range(5):
        name = base if attempt == 0 else f"{base}-{secrets.token_hex(2)}"
        try:
            username = clean_username(name)
        except ServiceError:  # taken (or looks like a taken name): another suffix
            continue
        bot = User(username=username, is_bot=True, bot_owner=creator)
        bot.set_unusable_password()
        try:
            with transaction.atomic():
                bot.save()
        except IntegrityError:
            continue
        return bot
    raise RuntimeError("no free name for the room's webhook bot")


def incoming_create(*, room, actor, name="") -> tuple[IncomingWebhook, str]:
    """A new incoming webhook of the room (its moderators) and its key (shown once)."""
    if not isinstance(name, str) or len(name) > 100:
        raise invalid("name must be a string of at most 100 characters", field="name")
    with transaction.atomic():
        room = rooms.lock_room(room)
        rooms.check_can_moderate(room, actor)
        rooms.check_not_archived(room)
        if room.kind == Room.Kind.DIRECT:
            raise forbidden("direct rooms have no webhooks")
        if IncomingWebhook.objects.filter(room=room).count() >= INCOMING_PER_ROOM:
            raise forbidden(f"at most {INCOMING_PER_ROOM} incoming webhooks per room")
        bot = _room_bot(room, actor)
        membership = rooms.get_membership(room, bot)
        if membership is None or not membership.is_active:
            rooms.room_invite(room=room, actor=actor, user=bot)
        key_id, secret = secrets.token_hex(KEY_ID_LENGTH // 2), secrets.token_urlsafe(32)
        hook = IncomingWebhook.objects.create(
            room=room,
            bot=bot,
            created_by=actor,
            name=name.strip(),
            key_id=key_id,
            digest=digest(secret),
        )
    return hook, key_id + secret


def incoming_for_key(key) -> IncomingWebhook:
    """The webhook of a URL key, or not_found (constant-time compare of the secret)."""
    if not isinstance(key, str) or len(key) <= KEY_ID_LENGTH or len(key) > 100:
        raise not_found("no such webhook")
    hook = (
        IncomingWebhook.objects.select_related("room", "bot")
        .filter(key_id=key[:KEY_ID_LENGTH])
        .first()
    )
    if hook is None or not hmac.compare_digest(hook.digest, digest(key[KEY_ID_LENGTH:])):
        raise not_found("no such webhook")
    return hook


def _client_id(hook, client_id, idempotency_key) -> uuid.UUID:
    if client_id is not None:
        try:
            return uuid.UUID(str(client_id))
        except ValueError:
            raise invalid("client_id must be a UUID", field="client_id") from None
    if idempotency_key:
        if len(idempotency_key) > 200:
            raise invalid("Idempotency-Key is longer than 200 characters")
        return uuid.uuid5(_IDEMPOTENCY, f"{hook.pk}:{idempotency_key}")
    return uuid.uuid4()


def incoming_post(*, hook, body, client_id=None, idempotency_key=None):
    """Post `body` in the hook's room as its bot: (the message.created event, created). The
    same client_id or Idempotency-Key again returns the first message's event (created False).
    Takes from the bot's write bucket (the one limiter)."""
    from apps.messaging import services as messaging
    from apps.messaging.models import Message

    wanted = _client_id(hook, client_id, idempotency_key)
    resend = Message.objects.filter(author=hook.bot, client_id=wanted).exists()
    if not resend:
        wait = ratelimit.take_sync(hook.bot.pk, "write")
        if wait:
            raise RateLimited(
                "too many posts to this webhook; slow down", retry_after=math.ceil(wait)
            )
    event = messaging.message_send(room=hook.room, author=hook.bot, body=body, client_id=wanted)
    return event, not resend


def incoming_delete(*, hook) -> None:
    hook.delete()


def incoming_delete_by_moderator(*, room, actor, hook_id) -> None:
    rooms.check_can_moderate(room, actor)
    if not IncomingWebhook.objects.filter(room=room, pk=hook_id).delete()[0]:
        raise not_found("no such webhook")


# --- Outgoing ---------------------------------------------------------------------------------


def _clean_rooms(owner, room_ids) -> list[int] | None:
    if room_ids is None:
        return None
    if (
        not isinstance(room_ids, list)
        or not room_ids
        or any(isinstance(i, bool) or not isinstance(i, int) or not 0 < i < 2**63 for i in room_ids)
    ):
        raise invalid("rooms must be a non-empty list of room ids (or omitted)", field="rooms")
    room_ids = sorted(set(room_ids))
    readable = set(
        Room.objects.readable_by(owner).filter(pk__in=room_ids).values_list("pk", flat=True)
    )
    if readable != set(room_ids):
        raise not_found(f"room {min(set(room_ids) - readable)} not found")
    return room_ids


def _clean_types(types) -> list[str] | None:
    if types is None:
        return None
    if (
        not isinstance(types, list)
        or not types
        or any(not isinstance(t, str) or t not in LOG_TYPES for t in types)
    ):
        raise invalid(
            "types must be a non-empty list of room-log event types: " + ", ".join(LOG_TYPES),
            field="types",
        )
    return sorted(set(types))


def _clean_secret(secret) -> str:
    if not isinstance(secret, str) or not SECRET_MIN <= len(secret) <= SECRET_MAX:
        raise invalid(
            f"secret must be a string of {SECRET_MIN} to {SECRET_MAX} characters", field="secret"
        )
    return secret


def webhook_create(*, owner, url, secret, rooms=None, types=None) -> OutgoingWebhook:
    """A new outgoing webhook; its cursors start at each room's head (new events only)."""
    if getattr(owner, "is_bot", False):
        raise forbidden("bots cannot own webhooks")
    ssrf.resolve(url)  # refused now rather than at every delivery (and again at each one)
    room_ids, types, secret = _clean_rooms(owner, rooms), _clean_types(types), _clean_secret(secret)
    if OutgoingWebhook.objects.filter(owner=owner).count() >= settings.WEBHOOK_MAX_PER_USER:
        raise forbidden(f"at most {settings.WEBHOOK_MAX_PER_USER} webhooks per account")
    with transaction.atomic():
        hook = OutgoingWebhook.objects.create(
            owner=owner, url=url.strip(), secret=secret, rooms=room_ids, types=types
        )
        heads = target_rooms(hook).values_list("pk", "last_seq")
        WebhookCursor.objects.bulk_create(
            [WebhookCursor(webhook=hook, room_id=pk, seq=seq) for pk, seq in heads]
        )
    return hook


def target_rooms(hook):
    """The rooms the webhook follows now: those listed (or all) that its owner may read."""
    rooms_qs = Room.objects.readable_by(hook.owner)
    if hook.rooms is not None:
        rooms_qs = rooms_qs.filter(pk__in=hook.rooms)
    return rooms_qs


def webhook_replay(*, hook, room_id, since) -> WebhookCursor:
    """Rewind (or move) the hook's cursor of the room to `since`: events after it are
    delivered again, in order. A delivery in flight cannot move it back (generation)."""
    if isinstance(room_id, bool) or not isinstance(room_id, int) or room_id <= 0:
        raise invalid("room must be a room id", field="room")
    if isinstance(since, bool) or not isinstance(since, int) or since < 0:
        raise invalid("since must be a non-negative seq", field="since")
    room = target_rooms(hook).filter(pk=room_id).first()
    if room is None:
        raise not_found("the webhook does not follow that room")
    if since > room.last_seq:
        raise invalid(f"since is past the room's last seq ({room.last_seq})", field="since")
    with transaction.atomic():
        cursor, _ = WebhookCursor.objects.select_for_update().get_or_create(webhook=hook, room=room)
        WebhookCursor.objects.filter(pk=cursor.pk).update(
            seq=since,
            generation=F("generation") + 1,
            attempts=0,
            next_attempt_at=None,
            last_error="",
        )
    cursor.refresh_from_db()
    return cursor


def webhook_status(hook) -> list[dict]:
    """Per followed room: cursor, lag (events not yet delivered), last_error, attempts."""
    heads = dict(target_rooms(hook).values_list("pk", "last_seq"))
    rows = []
    for cursor in WebhookCursor.objects.filter(webhook=hook, room_id__in=heads):
        rows.append(
            {
                "room": cursor.room_id,
                "cursor": cursor.seq,
                "lag": max(0, heads.pop(cursor.room_id) - cursor.seq),
                "last_error": cursor.last_error or None,
                "attempts": cursor.attempts,
                "next_attempt_at": cursor.next_attempt_at,
                "delivered_at": cursor.delivered_at,
            }
        )
    for room_id in heads:  # followed, not yet seen by a worker
        rows.append(
            {
                "room": room_id,
                "cursor": None,
                "lag": None,
                "last_error": None,
                "attempts": 0,
                "next_attempt_at": None,
                "delivered_at": None,
            }
        )
    return sorted(rows, key=lambda r: r["room"])
