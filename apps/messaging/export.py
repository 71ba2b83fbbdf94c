"""The caller's own data as JSON Lines (PROTOCOL §6, `GET /api/me/export/`).

One JSON object a line, each with a `kind`: `account` (first, once), then every `membership`,
`message` (their own: room, seq, body, ts, and its `attachments`; a deleted message has
`body: null`, `deleted: true` and no attachments), `reaction`, `notification` and `block`.
Nothing written by anyone else is in it: a notification names the room, seq, message and
actor, not the excerpt of the other person's message it quotes.

Rows are read with server-side cursors (`iterator(chunk_size=...)`) and written out a chunk
at a time, so an account with 100,000 messages is never held in memory: under ASGI the lines
go out through an async iterator that steps the database generator in the request's thread.
A chunk of messages reads its attachments in one more query (not one a message).

An attachment is as in message objects (id, name, size, content_type, url, thumbnail_url,
width, height), but its links are absolute addresses of the authorized download view, not the
signed links of REST answers: an export is kept, and a signed link expires within the hour.
They answer the owner's session or token as long as they may read the room.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from itertools import islice

from asgiref.sync import sync_to_async

from apps.attachments.models import Upload
from apps.attachments.services import event_data as attachment_data
from apps.events.catalogue import format_ts
from apps.notifications.models import Notification
from apps.rooms.models import Membership
from apps.users.models import Block

from .models import Message, Reaction

CONTENT_TYPE = "application/x-ndjson"
CHUNK_ROWS = 500  # rows fetched from a server-side cursor at a time
WRITE_CHARS = 128 * 1024  # lines are written out in pieces of about this size


def _ts(value):
    return format_ts(value) if value is not None else None


def _chunks(rows: Iterator, size: int) -> Iterator[list]:
    while chunk := list(islice(rows, size)):
        yield chunk


def _line(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n"


def account_line(user) -> dict:
    return {
        "kind": "account",
        "id": user.pk,
        "username": user.username,
        "email": user.email,
        "date_joined": _ts(user.date_joined),
        "last_login": _ts(user.last_login),
    }


def membership_lines(user) -> Iterator[dict]:
    rows = (
        Membership.objects.filter(user=user)
        .order_by("pk")
        .values_list(
            "room_id",
            "room__name",
            "role",
            "is_active",
            "joined_at",
            "last_read_seq",
            "muted_until",
            "banned_at",
            "banned_until",
        )
    )
    for room, name, role, active, joined, read, muted, banned, banned_until in rows.iterator(
        chunk_size=CHUNK_ROWS
    ):
        yield {
            "kind": "membership",
            "room": room,
            "room_name": name,
            "role": role,
            "active": active,
            "joined_at": _ts(joined),
            "last_read_seq": read,
            "muted_until": _ts(muted),
            "banned_at": _ts(banned),
            "banned_until": _ts(banned_until),
        }


def message_lines(user, absolute: Callable[[str], str] = str) -> Iterator[dict]:
    """The user's own messages; `absolute` makes the attachments' paths full addresses."""
    rows = (
        Message.objects.filter(author=user)
        .order_by("pk")
        .values_list(
            "pk",
            "room_id",
            "seq",
            "body",
            "reply_to_id",
            "client_id",
            "created_at",
            "edited_at",
            "deleted_at",
        )
    )
    for chunk in _chunks(rows.iterator(chunk_size=CHUNK_ROWS), CHUNK_ROWS):
        files = attachments_of([row[0] for row in chunk if row[8] is None], absolute)
        for pk, room, seq, body, reply_to, client_id, created, edited, deleted in chunk:
            yield {
                "kind": "message",
                "id": pk,
                "room": room,
                "seq": seq,
                "body": None if deleted is not None else body,
                "reply_to": reply_to,
                "client_id": str(client_id),
                "ts": _ts(created),
                "edited_at": _ts(edited),
                "deleted": deleted is not None,
                "attachments": files.get(pk, []),
            }


def attachments_of(message_ids, absolute: Callable[[str], str]) -> dict[int, list[dict]]:
    """The attachments of these (live) messages, in their order, by message id."""
    found: dict[int, list[dict]] = {}
    if not message_ids:
        return found
    for upload in Upload.objects.of_messages(message_ids).order_by("message_id", "position"):
        data = attachment_data(upload)
        data["url"] = absolute(data["url"])
        if data["thumbnail_url"] is not None:
            data["thumbnail_url"] = absolute(data["thumbnail_url"])
        found.setdefault(upload.message_id, []).append(data)
    return found


def reaction_lines(user) -> Iterator[dict]:
    rows = (
        Reaction.objects.filter(user=user)
        .order_by("pk")
        .values_list("message_id", "message__room_id", "emoji", "created_at")
    )
    for message, room, emoji, created in rows.iterator(chunk_size=CHUNK_ROWS):
        yield {
            "kind": "reaction",
            "message": message,
            "room": room,
            "emoji": emoji,
            "ts": _ts(created),
        }


def notification_lines(user) -> Iterator[dict]:
    # No excerpt: it is the text of someone else's message.
    rows = (
        Notification.objects.filter(user=user)
        .order_by("pk")
        .values_list(
            "pk", "kind", "room_id", "seq", "message_id", "actor_id", "created_at", "read_at"
        )
    )
    for pk, kind, room, seq, message, actor, created, read in rows.iterator(chunk_size=CHUNK_ROWS):
        yield {
            "kind": "notification",
            "id": pk,
            "type": kind,
            "room": room,
            "seq": seq,
            "message": message,
            "actor": actor,
            "ts": _ts(created),
            "read_at": _ts(read),
        }


def block_lines(user) -> Iterator[dict]:
    """The people the user blocked (PROTOCOL §7); not who blocked them."""
    rows = Block.objects.filter(blocker=user).order_by("pk").values_list("blocked_id", "created_at")
    for blocked, created in rows.iterator(chunk_size=CHUNK_ROWS):
        yield {"kind": "block", "user": blocked, "ts": _ts(created)}


def export_lines(user, absolute: Callable[[str], str] = str) -> Iterator[str]:
    """Every line of the user's export, in pieces of about WRITE_CHARS (whole lines).
    `absolute` turns a path into a full address (the request's build_absolute_uri)."""
    yield _line(account_line(user))
    sections = (
        membership_lines(user),
        message_lines(user, absolute),
        reaction_lines(user),
        notification_lines(user),
        block_lines(user),
    )
    for objs in sections:
        piece, size = [], 0
        for obj in objs:
            piece.append(line := _line(obj))
            size += len(line)
            if size >= WRITE_CHARS:
                yield "".join(piece)
                piece, size = [], 0
        if piece:
            yield "".join(piece)


async def aexport_lines(user, absolute: Callable[[str], str] = str) -> AsyncIterator[str]:
    """export_lines for an ASGI response: each chunk is read in the request's sync thread
    (thread-sensitive, so the server-side cursors stay on one connection), and the generator
    is closed there if the client goes away."""
    chunks = export_lines(user, absolute)
    step = sync_to_async(next, thread_sensitive=True)
    try:
        while (chunk := await step(chunks, None)) is not None:
            yield chunk
    finally:
        await sync_to_async(chunks.close, thread_sensitive=True)()
