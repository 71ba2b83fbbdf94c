"""The send path as a plan: what a batch of `message.send` requests reads, what the rules
decide, what it writes and what each request answers. Pure functions: no I/O here.

One batch goes through these steps; an executor per database does the I/O between them
(apps.messaging.send_pg on PostgreSQL, sync and asyncio; apps.messaging.send_orm elsewhere),
and apps.messaging.services orchestrates (message_send_many, amessage_send_many):

1. `clean(requests)`: the shape of each request (body, client_id, room id); a bad one gets
   its ServiceError in `results` and goes no further.
2. `keys(todo)`: what the executor reads, under the rooms' row locks, into `Reads`.
3. `decide(todo, reads, results, now)`: the rules (apps.rooms.services.check_can_send: bans,
   mutes, blocks, post policy, slow mode), resends (the same author and client_id, in an
   earlier batch or this one) and reply_to; the accepted sends, in order.
4. `plan_messages(decision, reads)`: the new messages with their seqs (apps.events.seqs, the
   project's one seq rule) and each room's new last_seq; then, once the executor knows the
   message ids, `created_events(...)`: the message.created events.
5. `extra_writes(decision, messages)`: the per-batch extra writes (below).
6. `wanted(resends)` / `answer(...)`: each request's event (or the original a resend answers
   with, read from the log by (room id, seq) when it came from an earlier batch).

Extension point, for what a send also writes (thread counters, attachments, mentions, ...):
add a planner to `EXTRA_PLANNERS`, a pure function (decision, messages) -> ExtraWrite or None
(None when the batch needs nothing: no extra statement for the others), and the ExtraWrite's
`kind` to both executors: `send_pg.EXTRA_STATEMENTS[kind](rows) -> Statement` (it is combined
with the batch's other writes into one statement: no extra round trip) and
`send_orm.EXTRA_WRITES[kind](rows)` (ORM writes). The slow-mode stamp (`post_stamps`) is the
first one. An extension that must read something first adds a field to `Reads`, a statement to
`send_pg.read_statements` (it shares the reads' round trip) and a query to `send_orm.read`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

from django.conf import settings

from apps.attachments import send as attachments
from apps.core.errors import ServiceError, invalid, not_found
from apps.core.instances import InstanceBuilder
from apps.core.text import check_text
from apps.events import catalogue as ev
from apps.events import seqs
from apps.events.models import Event
from apps.events.services import build_event
from apps.rooms import services as rooms

from . import threads
from .models import Message

# Message(**kwargs), without Model.__init__'s cost (apps.core.instances).
new_message = InstanceBuilder(Message)

# The columns of a new message row (send_pg and send_orm insert these; PostgreSQL adds "id").
MESSAGE_FIELDS = [
    "room_id",
    "author_id",
    "body",
    "client_id",
    "reply_to_id",
    "thread_id",
    "seq",
    "created_at",
]


class SendRequest(NamedTuple):
    """One `message.send`: `room` is a Room or a room id; the fields are checked by
    message_send_many (a bad one is that request's error)."""

    room: object
    author: object
    body: object
    client_id: object
    reply_to: object = None
    attachments: object = None  # upload ids (apps.attachments.send)


class Send(NamedTuple):
    """A request whose shape is right: `index` is its place in the batch."""

    index: int
    room_id: int
    author: object
    body: str
    client_id: uuid.UUID
    reply_to: object
    attachments: tuple = ()  # upload ids, cleaned


def clean_body(body) -> str:
    """Non-empty, at most CHAT_MESSAGE_MAX_LENGTH characters, no control characters, something
    visible in it, bidirectional controls balanced (apps.core.text)."""
    if not isinstance(body, str):
        raise invalid("body must be a string")
    if len(body) > settings.CHAT_MESSAGE_MAX_LENGTH:
        raise ServiceError(
            "too_large", f"body is longer than {settings.CHAT_MESSAGE_MAX_LENGTH} characters"
        )
    check_text(body, "body", multiline=True)
    return body


def clean_client_id(client_id) -> uuid.UUID:
    if isinstance(client_id, uuid.UUID):
        return client_id
    try:
        return uuid.UUID(str(client_id))
    except (ValueError, TypeError, AttributeError):
        raise invalid("client_id must be a UUID") from None


def room_id_of(room) -> int:
    room_id = getattr(room, "pk", room)
    if isinstance(room_id, bool) or not isinstance(room_id, int):
        raise not_found("room not found")
    return room_id


def clean(requests) -> tuple[list, list[Send]]:
    """(results: None, or the ServiceError of a request refused for its shape; the sends)."""
    results: list = [None] * len(requests)
    todo = []
    for index, request in enumerate(requests):
        try:
            files = attachments.clean(request.attachments)
            # A message may be files alone (an empty body).
            body = "" if files and request.body == "" else clean_body(request.body)
            todo.append(
                Send(
                    index,
                    room_id_of(request.room),
                    request.author,
                    body,
                    clean_client_id(request.client_id),
                    request.reply_to,
                    files,
                )
            )
        except ServiceError as exc:
            results[index] = exc
    return results, todo


class Keys(NamedTuple):
    """What the executor reads for a batch (sorted where a lock order depends on it)."""

    room_ids: list
    author_ids: list
    client_ids: list
    reply_ids: list  # the reply_to values that can be message ids
    upload_ids: list  # the attachments listed (sorted: they are locked)
    # The (room id, author id) and (author id, client id) pairs the batch has: the memberships
    # and earlier sends it looks up. Read by these pairs, not by room_ids x author_ids, a batch
    # of n sends from n authors in n rooms probes an index n times, not n * n times.
    posts: tuple
    sends: tuple


def keys(todo: list[Send]) -> Keys:
    return Keys(
        sorted({send.room_id for send in todo}),
        sorted({send.author.pk for send in todo}),
        list({send.client_id for send in todo}),
        sorted({s.reply_to for s in todo if type(s.reply_to) is int and 0 < s.reply_to < 2**63}),
        sorted({upload_id for send in todo for upload_id in send.attachments}),
        tuple(sorted({(send.room_id, send.author.pk) for send in todo})),
        tuple({(send.author.pk, send.client_id): None for send in todo}),
    )


class Reads(NamedTuple):
    """What the executor read under the room locks."""

    rooms: dict  # locked rooms by id
    memberships: dict  # (room id, user id) -> membership with its user
    earlier: dict  # (author id, client id) -> (room id, seq) of a message sent before
    reply_rooms: dict  # reply_to message id -> its room id (None: deleted)
    message_ids: list | None  # ids drawn for the new messages (PostgreSQL), else None
    blocked: set  # (direct room id, author id) where the room's other member blocked the author
    reply_roots: dict  # reply_to message id -> its thread's root (threads.Root)
    # The listed attachments by upload id, locked (apps.attachments.send); read-only.
    uploads: Mapping = MappingProxyType({})


class Decision(NamedTuple):
    """What the rules decided: the accepted sends (in order), {request index: what a resend
    answers with: (room id, seq) of an earlier batch's message, or this batch's Send}, the
    batch's clock, and the memberships whose last_posted_at becomes `now` (slow mode)."""

    accepted: list
    resends: dict
    now: object
    stamped: list


def decide(todo: list[Send], reads: Reads, results: list, now) -> Decision:
    """Check each send under the locks; a refused one's ServiceError goes in `results`. A
    member's send in a slow room stamps their membership here, so a second send of theirs
    later in the same batch is refused like one in the next batch."""
    accepted: list[Send] = []
    first_send: dict[tuple, Send] = {}
    resends: dict[int, tuple[int, int] | Send] = {}
    stamped: list[int] = []
    claimed: set = set()  # uploads taken by earlier sends of the batch
    for send in todo:
        key = (send.author.pk, send.client_id)
        if key in reads.earlier or key in first_send:
            resends[send.index] = reads.earlier.get(key) or first_send[key]
            continue
        room = reads.rooms.get(send.room_id)
        membership = reads.memberships.get((send.room_id, send.author.pk))
        try:
            check_send(send, room, membership, reads, now)
            if send.attachments:  # the last check: it claims the uploads
                attachments.check(send.attachments, send.author.pk, reads.uploads, claimed)
        except ServiceError as exc:
            results[send.index] = exc
            continue
        if rooms.stamps_posts(room, send.author, membership):
            membership.last_posted_at = now
            stamped.append(membership.pk)
        first_send[key] = send
        accepted.append(send)
    return Decision(accepted, resends, now, stamped)


def check_send(send: Send, room, membership, reads: Reads, now) -> None:
    """The rules for one send, on what was read (raises the ServiceError that refuses it)."""
    if room is None:
        raise not_found("room not found")
    rooms.check_can_send(
        room, send.author, membership, now=now, blocked=(room.pk, send.author.pk) in reads.blocked
    )
    if send.reply_to is not None:
        if isinstance(send.reply_to, bool) or not isinstance(send.reply_to, int):
            raise invalid("reply_to must be a message id")
        target_room = reads.reply_rooms.get(send.reply_to, 0)
        if target_room is None:
            raise not_found("reply_to: the message was deleted")
        if target_room != room.pk:
            raise invalid("reply_to is not a message of this room")


def plan_messages(decision: Decision, reads: Reads) -> tuple[list[Message], dict[int, int]]:
    """The accepted sends' unsaved messages with their seqs (the seq rule, after each locked
    room's last_seq), and {room id: its new last_seq} (also set on the locked Room objects)."""
    locked = reads.rooms
    seq_of, last = seqs.assign(
        {pk: room.last_seq for pk, room in locked.items()},
        [send.room_id for send in decision.accepted],
    )
    messages = [
        new_message(
            room=locked[send.room_id],
            author=send.author,
            body=send.body,
            client_id=send.client_id,
            reply_to_id=send.reply_to,
            thread_id=threads.thread_of(send.reply_to, reads.reply_roots),
            seq=seq,
            created_at=decision.now,
        )
        for send, seq in zip(decision.accepted, seq_of, strict=True)
    ]
    for room_id, seq in last.items():
        locked[room_id].last_seq = seq
    return messages, last


def message_row(message: Message) -> tuple:
    return tuple(getattr(message, field) for field in MESSAGE_FIELDS)


def created_events(
    decision: Decision, messages: list[Message], ids, uploads: Mapping = MappingProxyType({})
) -> dict[int, Event]:
    """The messages, given their ids, and their message.created events: {request index: event}.
    `uploads`: Reads.uploads, for the events' attachments."""
    for message, pk in zip(messages, ids, strict=True):
        message.pk = pk
        message._state.adding = False
    return {
        send.index: build_event(
            "message.created",
            room=message.room,
            seq=message.seq,
            actor=message.author,
            data=ev.message_created(
                message, attachments=attachments.data(send.attachments, uploads)
            ),
            ts=message.created_at,
        )
        for send, message in zip(decision.accepted, messages, strict=True)
    }


class ExtraWrite(NamedTuple):
    """A per-batch write beyond the messages, events and last_seqs: `kind` names the writer in
    each executor (send_pg.EXTRA_STATEMENTS, send_orm.EXTRA_WRITES), `rows` is its input;
    `fanout`: ephemeral events for the room's sockets once the batch committed, after its
    message.created events (fan-out items as send_events_on_commit takes them)."""

    kind: str
    rows: object
    fanout: tuple = ()


def post_stamps(decision: Decision, messages: list[Message], reads: Reads) -> ExtraWrite | None:
    """Slow mode: the memberships whose last_posted_at the batch sets to its `now`."""
    if not decision.stamped:  # slow-mode rooms only: no extra write for the others
        return None
    return ExtraWrite("post_stamps", (decision.now, list(decision.stamped)))


def thread_updates(decision: Decision, messages: list[Message], reads: Reads) -> ExtraWrite | None:
    """Threads: the roots' new counts and the follows the batch's replies make, and the
    thread.updated events (apps.messaging.threads). None when the batch has no reply."""
    thread_plan = threads.plan(messages, reads.reply_roots)
    if not thread_plan.counts:
        return None
    return ExtraWrite("threads", thread_plan, thread_plan.fanout_items())


def attachment_links(
    decision: Decision, messages: list[Message], reads: Reads
) -> ExtraWrite | None:
    """The uploads the accepted sends attach: (upload id, message id, position) rows (the
    messages have their ids: created_events ran)."""
    if not any(send.attachments for send in decision.accepted):
        return None  # no extra write for a batch without files
    rows = attachments.links(
        (send.attachments, message.pk)
        for send, message in zip(decision.accepted, messages, strict=True)
    )
    return ExtraWrite("attachment_links", rows) if rows else None


# The planners of the per-batch extra writes, in the order they are written (see the module
# docstring: the extension point for what a send also writes). Each takes the decision, the
# new messages (with their seqs) and the reads.
EXTRA_PLANNERS = [post_stamps, thread_updates, attachment_links]


def extra_writes(decision: Decision, messages: list[Message], reads: Reads) -> list[ExtraWrite]:
    found = (planner(decision, messages, reads) for planner in EXTRA_PLANNERS)
    return [extra for extra in found if extra is not None]


def wanted(resends: dict) -> dict[tuple[int, int], list[int]]:
    """(room id, seq) of the logged events that resends answer with -> request indexes."""
    found: dict[tuple[int, int], list[int]] = {}
    for index, original in resends.items():
        if not isinstance(original, Send):
            found.setdefault(original, []).append(index)
    return found


def answer(decision: Decision, created: dict, logged: dict, results: list) -> None:
    """Fill in the results: each accepted send's event, each resend's original (sent in this
    batch, or `logged`: read from the log by (room id, seq))."""
    for send in decision.accepted:
        results[send.index] = created[send.index]
    for index, original in decision.resends.items():
        if isinstance(original, Send):
            results[index] = created[original.index]
        else:
            results[index] = logged[original]
