"""The send plan's PostgreSQL executor: its statements, the hydration of their rows, and the
batch run on Django's connection (a database thread) or on an asyncio psycopg connection.

On a database thread a batch is four round trips: BEGIN; the reads, in one round trip of
psycopg's pipeline (the locks, memberships, earlier sends, blocks, reply targets and the new
message ids, drawn from the sequence so the events are built before anything is written); the
writes, one statement (last_seq, the messages, the events and the plan's extra writes); COMMIT.
The pipeline sits inside Django's transaction: BEGIN and COMMIT go outside it, which spares
the syncs psycopg adds around a transaction that starts or ends inside a pipeline. On the
lane's asyncio connection (autocommit, the transaction its own statements) BEGIN rides with
the reads and COMMIT with the writes: two round trips, so the batch waits for the event loop
twice, not four times, and holds its room locks for one round trip after the reads, not two
(tests/messaging/test_send_pg.py counts them). A resend of an earlier batch's message adds
one read of the log. The rules, seqs and answers are apps.messaging.send_plan's; what a batch
does after commit is send_events_on_commit's.
"""

from __future__ import annotations

import functools
import json
from contextlib import contextmanager

from django.db import connection, transaction
from django.utils import timezone

from apps.attachments import send as attachments
from apps.core.instances import InstanceBuilder
from apps.core.sql import Statement, arun, combine, pg_insert, pg_update, run
from apps.events.models import Event
from apps.events.services import events_statement, fanout_items, send_events_on_commit
from apps.rooms.models import Membership, Room
from apps.users.models import Block

from . import send_plan as plan
from . import threads
from .models import Message


def _user_model():
    return Membership._meta.get_field("user").related_model


def _columns(model, alias=None) -> str:
    """Every concrete column of the model, in field order (what from_db expects)."""
    prefix = f"{alias}." if alias else ""
    return ", ".join(f'{prefix}"{f.column}"' for f in model._meta.concrete_fields)


def read_statements(keys: plan.Keys, count: int) -> list[Statement]:
    """Lock the rooms (in id order), read the memberships with their users and the earlier
    sends (each by the batch's own pairs, see plan.Keys), the blocks that close direct rooms to
    their authors and the reply targets, and draw `count` message ids from the sequence (all
    in one round trip)."""
    user = _user_model()
    messages = Message._meta.db_table
    blocks = Block._meta.db_table
    return (
        [
            Statement(
                f"SELECT {_columns(Room)} FROM {Room._meta.db_table} WHERE id = ANY(%b) "
                "ORDER BY id FOR NO KEY UPDATE",  # as lock_room: key checks pass
                [keys.room_ids],
                True,
            ),
            Statement(
                f"SELECT {_columns(Membership, 'm')}, {_columns(user, 'u')} "
                "FROM unnest(%b::bigint[], %b::bigint[]) AS k(room_id, user_id) "
                f"JOIN {Membership._meta.db_table} m "
                "ON m.room_id = k.room_id AND m.user_id = k.user_id "
                f"JOIN {user._meta.db_table} u ON u.id = m.user_id",
                [[room for room, _ in keys.posts], [author for _, author in keys.posts]],
                True,
            ),
            Statement(
                "SELECT m.author_id, m.client_id, m.room_id, m.seq "
                "FROM unnest(%b::bigint[], %b::uuid[]) AS k(author_id, client_id) "
                f"JOIN {messages} m ON m.author_id = k.author_id AND m.client_id = k.client_id",
                [[author for author, _ in keys.sends], [client for _, client in keys.sends]],
                True,
            ),
            # The sequence looked up once (a materialized CTE), not for every id drawn.
            Statement(
                "WITH s AS MATERIALIZED (SELECT pg_get_serial_sequence(%b, 'id')::regclass AS "
                "seq) SELECT nextval(s.seq) FROM s, generate_series(1, %b)",
                [messages, count],
                True,
            ),
            # A direct room's key is "<low id>:<high id>" of its two members.
            Statement(
                f"SELECT r.id, b.blocked_id FROM {Room._meta.db_table} r JOIN {blocks} b "
                "ON r.direct_key = LEAST(b.blocker_id, b.blocked_id)::text || ':' || "
                "GREATEST(b.blocker_id, b.blocked_id)::text "
                "WHERE r.id = ANY(%b) AND r.kind = 'direct' AND b.blocked_id = ANY(%b)",
                [keys.room_ids, keys.author_ids],
                True,
            ),
        ]
        + ([threads.reply_targets_statement(keys.reply_ids)] if keys.reply_ids else [])
        + ([attachments.read_statement(keys.upload_ids)] if keys.upload_ids else [])
    )


# Room, Membership and user instances from the reads' rows, without Model.__init__'s cost
# (apps.core.instances): a batch reads one membership and user per author.
_rooms = InstanceBuilder(Room)
_memberships = InstanceBuilder(Membership)


@functools.cache
def _users() -> InstanceBuilder:  # the user model is known once the apps are loaded
    return InstanceBuilder(_user_model())


def reads_from_rows(rows, keys: plan.Keys) -> plan.Reads:
    users = _users()
    db = connection.alias
    locked = {r[0]: _rooms.from_db(db, r) for r in rows[0]}
    split = len(Membership._meta.concrete_fields)
    memberships = {}
    for row in rows[1]:
        user = users.from_db(db, row[split:])
        membership = _memberships.from_db(db, row[:split], user=user)
        memberships[(membership.room_id, membership.user_id)] = membership
    earlier = {(a, c): (r, s) for a, c, r, s in rows[2]}
    replies, roots = threads.reply_targets_from_rows(rows[5]) if keys.reply_ids else ({}, {})
    uploads = attachments.from_rows(rows[-1]) if keys.upload_ids else {}
    return plan.Reads(
        locked,
        memberships,
        earlier,
        replies,
        [row[0] for row in rows[3]],
        {tuple(row) for row in rows[4]},
        roots,
        uploads,
    )


def _post_stamps(rows) -> Statement:
    now, membership_ids = rows
    return Statement(
        f"UPDATE {Membership._meta.db_table} SET last_posted_at = %b WHERE id = ANY(%b)",
        [now, membership_ids],
    )


# send_plan.ExtraWrite kind -> its statement, or statements (combined with the batch's other
# writes).
EXTRA_STATEMENTS = {
    "post_stamps": _post_stamps,
    "threads": threads.pg_statements,
    # (the uploads' foreign key to the new messages is checked at commit)
    "attachment_links": attachments.link_statement,
}


def write_statement(decision: plan.Decision, reads: plan.Reads) -> tuple[dict, Statement, list]:
    """The accepted sends' events ({request index: event}), the one statement that writes
    them, their messages, the rooms' last_seq and the extra writes (nothing waits for it),
    and the fan-out items for after the commit (the events, then the extra writes')."""
    messages, last = plan.plan_messages(decision, reads)
    ids = reads.message_ids[: len(messages)]
    created = plan.created_events(decision, messages, ids, reads.uploads)
    extras, later = [], []
    for extra in plan.extra_writes(decision, messages, reads):
        written = EXTRA_STATEMENTS[extra.kind](extra.rows)
        extras += written if isinstance(written, list) else [written]
        later += extra.fanout
    statement = combine(
        [
            *extras,
            pg_update(Room, "last_seq", last),
            pg_insert(
                Message,
                ["id", *plan.MESSAGE_FIELDS],
                [(pk, *plan.message_row(m)) for pk, m in zip(ids, messages, strict=True)],
            ),
            events_statement(list(created.values())),  # serializes the envelopes: then fan-out
        ]
    )
    return created, fanout_items(created.values()) + later, statement


def logged_statement(wanted) -> Statement:
    """Read the logged events that resends answer with, by (room id, seq)."""
    pairs = list(wanted)
    return Statement(
        f"SELECT {_columns(Event, 'e')} FROM {Event._meta.db_table} e JOIN "
        "unnest(%b::bigint[], %b::bigint[]) AS w(room_id, seq) "
        "ON e.room_id = w.room_id AND e.seq = w.seq",
        [[room for room, _ in pairs], [seq for _, seq in pairs]],
        True,
    )


def logged_from_rows(rows) -> dict[tuple[int, int], Event]:
    events = [Event.from_db(connection.alias, None, row) for row in rows]
    for event in events:  # from_db does not run the JSON field's converter
        if isinstance(event.envelope, (str, bytes)):
            event.envelope = json.loads(event.envelope)
    return {(e.room_id, e.seq): e for e in events}


@contextmanager
def _pipeline():
    """psycopg's pipeline mode for the batch, so its statements share round trips. Errors
    come out as Django's database errors, as from the ORM."""
    connection.ensure_connection()
    with connection.wrap_database_errors, connection.connection.pipeline():
        yield


def send_batch(todo: list[plan.Send], results: list) -> None:
    """Run the batch in one transaction on Django's connection (a database thread); the
    events are fanned out after commit. Raises IntegrityError when a resend races another
    transaction (the caller retries)."""
    with transaction.atomic(), _pipeline():
        keys = plan.keys(todo)
        reads = reads_from_rows(run(read_statements(keys, len(todo))), keys)
        decision = plan.decide(todo, reads, results, timezone.now())
        created = {}
        if decision.accepted:
            created, fanout, statement = write_statement(decision, reads)
            run([statement])
            send_events_on_commit(fanout)
        wanted = plan.wanted(decision.resends)
        logged = logged_from_rows(run([logged_statement(wanted)])[0]) if wanted else {}
        plan.answer(decision, created, logged, results)


async def asend_batch(conn, todo: list[plan.Send], results: list, admission=None) -> None:
    """send_batch on an asyncio psycopg connection in autocommit mode (the lane's), on the
    event loop: the same statements, so a batch never waits for a database thread to get the
    GIL back after each round trip, and two round trips instead of four: the transaction's
    BEGIN goes out with the reads and its COMMIT with the writes, in one pipeline (psycopg
    adds no BEGIN or sync of its own in autocommit mode). A failed statement aborts the rest
    of the pipeline, COMMIT included, and raises here; any database error is left to the
    caller, which drops the connection (so the open transaction rolls back) and retries.

    `admission` (see services.amessage_send_many) is awaited once the reads are back: the
    rate limiter's round trip runs alongside them, and the sends it refused are left out of
    the writes. (The room locks are held meanwhile; Redis calls are bounded by
    apps.core.redis.Guard.)"""
    if not conn.autocommit:
        raise ValueError("asend_batch runs its own transaction: the connection must autocommit")
    created, fanout = {}, []
    async with conn.pipeline():
        await conn.execute("BEGIN")
        keys = plan.keys(todo)
        reads = reads_from_rows(await arun(conn, read_statements(keys, len(todo))), keys)
        if admission is not None:
            refusals = await admission
            todo = [send for send in todo if refusals[send.index] is None]
        decision = plan.decide(todo, reads, results, timezone.now())
        if decision.accepted:
            created, fanout, statement = write_statement(decision, reads)
            await arun(conn, [statement])
        wanted = plan.wanted(decision.resends)
        logged = {}
        if wanted:
            logged = logged_from_rows((await arun(conn, [logged_statement(wanted)]))[0])
        await conn.execute("COMMIT")
    # The pipeline's exit synced: committed, or raised. after_commit runs the fan-out now.
    plan.answer(decision, created, logged, results)
    if created:
        send_events_on_commit(fanout)
