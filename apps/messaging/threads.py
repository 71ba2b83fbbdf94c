"""Threads on top of reply_to (PROTOCOL §8).

A message sent with `reply_to` joins the thread of its root: `thread` = the reply target's
thread, or the target itself when it has none. The root's `reply_count` (its live replies)
and `last_reply_seq` (the seq of the newest of them) change only under the room's lock: in
the send path (`plan` from the batch's accepted sends, written with the batch's other
statements: no extra round trip, one statement more in the batch's combined write whatever
the batch's size) and in a deletion (`recount_statement`, pipelined with the redaction).
A deleted reply leaves the counts (they count live replies); a deleted root keeps its thread.

Following: the root's author and every replier follow the thread (made by the reply);
`ThreadFollow.last_read_seq` is the follower's read position, so `unread` is the number of
live replies of others after it. A reply sets its author's read position to it.

`thread.updated` (ephemeral: no seq, not persisted, room fan-out, not on Kafka) tells the
room's sockets a root's counts changed, after the commit that changed them. It carries the
counts, not the reply: the reply itself is the room's durable `message.created`, so a client
that missed a thread.updated still gets the truth from the message objects (REST, replay).
"""

from __future__ import annotations

from typing import NamedTuple

from django.db import connection
from django.utils import timezone

from apps.core.sql import Statement
from apps.events import catalogue as ev

from .models import Message, ThreadFollow


class Root(NamedTuple):
    """A reply target's thread root, as read under the room lock."""

    id: int
    author_id: int
    reply_count: int
    last_reply_seq: int | None


class ThreadPlan(NamedTuple):
    counts: dict  # root id -> (reply_count, last_reply_seq, room id, actor)
    repliers: dict  # (user id, root id) -> seq of their last reply in the batch
    authors: list  # (user id, root id): roots' authors who did not reply in this batch

    def fanout_items(self) -> list[tuple]:
        """thread.updated for every root the batch replied to (after its message.created)."""
        now = timezone.now()
        return [
            (updated_envelope(room_id, root, count, last, actor=actor, ts=now), (), None)
            for root, (count, last, room_id, actor) in self.counts.items()
        ]


EMPTY = ThreadPlan({}, {}, [])


def updated_envelope(room_id, root_id, reply_count, last_reply_seq, *, actor, ts=None) -> dict:
    return ev.envelope(
        "thread.updated",
        room_id=room_id,
        seq=None,
        actor=actor,
        data=ev.thread_updated(root_id, reply_count=reply_count, last_reply_seq=last_reply_seq),
        ts=ts or timezone.now(),
    )


# --- Send path ------------------------------------------------------------------------------


def reply_targets_statement(reply_ids: list[int]) -> Statement:
    """PostgreSQL, with the send's reads (after the room locks): each reply target's room
    (None: deleted) and its root's id, author and counts."""
    m = Message._meta.db_table
    return Statement(
        f"SELECT t.id, CASE WHEN t.deleted_at IS NULL THEN t.room_id END, r.id, r.author_id, "
        f"r.reply_count, r.last_reply_seq FROM {m} t JOIN {m} r ON r.id = COALESCE(t.thread_id, "
        "t.id) WHERE t.id = ANY(%b)",
        [reply_ids],
        True,
    )


def reply_targets_from_rows(rows) -> tuple[dict, dict]:
    """{target id: room id or None}, {target id: Root}."""
    return ({row[0]: row[1] for row in rows}, {row[0]: Root(*row[2:]) for row in rows})


def reply_targets(reply_ids: list[int]) -> tuple[dict, dict]:
    """reply_targets_statement through the ORM (SQLite)."""
    if not reply_ids:
        return {}, {}
    targets = list(
        Message.objects.filter(pk__in=reply_ids).values_list(
            "id", "room_id", "deleted_at", "thread_id"
        )
    )
    roots = {
        pk: Root(pk, *rest)
        for pk, *rest in Message.objects.filter(
            pk__in={thread or pk for pk, _, _, thread in targets}
        ).values_list("id", "author_id", "reply_count", "last_reply_seq")
    }
    return (
        {pk: None if deleted else room for pk, room, deleted, _ in targets},
        {pk: roots[thread or pk] for pk, _, _, thread in targets},
    )


def thread_of(reply_to, roots: dict) -> int | None:
    """A new message's `thread`: its reply target's root (`roots`: reply_targets' second
    dict), or None."""
    root = roots.get(reply_to) if reply_to is not None else None
    return root.id if root is not None else None


def plan(messages: list[Message], roots: dict) -> ThreadPlan:
    """The roots' new counts and the follows the new messages make (they carry their seqs
    and `thread`, send_plan.plan_messages; `roots` is reply_targets' second dict)."""
    counts: dict = {}
    repliers: dict = {}
    author_of: dict = {}
    for message in messages:
        root = roots.get(message.reply_to_id) if message.thread_id is not None else None
        if root is None:
            continue
        count = counts[root.id][0] if root.id in counts else root.reply_count
        counts[root.id] = (count + 1, message.seq, message.room_id, message.author)
        repliers[(message.author_id, root.id)] = message.seq
        author_of[root.id] = root.author_id
    authors = [(user, root) for root, user in author_of.items() if (user, root) not in repliers]
    return ThreadPlan(counts, repliers, authors)


def pg_statements(thread_plan: ThreadPlan) -> list[Statement]:
    """PostgreSQL: the plan's writes, for the batch's combined statement (nothing to return)."""
    if not thread_plan.counts:
        return []
    m, f = Message._meta.db_table, ThreadFollow._meta.db_table
    roots = list(thread_plan.counts)
    statements = [
        Statement(
            f"UPDATE {m} SET reply_count = v.n, last_reply_seq = v.s FROM unnest(%b::bigint[], "
            f"%b::integer[], %b::bigint[]) AS v(id, n, s) WHERE {m}.id = v.id",
            [
                roots,
                [thread_plan.counts[r][0] for r in roots],
                [thread_plan.counts[r][1] for r in roots],
            ],
        )
    ]
    pairs = list(thread_plan.repliers)
    statements.append(
        Statement(
            f"INSERT INTO {f} (user_id, root_id, following, last_read_seq, created_at) "
            "SELECT u, r, true, s, now() FROM unnest(%b::bigint[], %b::bigint[], %b::bigint[]) "
            "AS v(u, r, s) ON CONFLICT (user_id, root_id) DO UPDATE SET following = true, "
            f"last_read_seq = GREATEST({f}.last_read_seq, excluded.last_read_seq)",
            [
                [u for u, _ in pairs],
                [r for _, r in pairs],
                [thread_plan.repliers[p] for p in pairs],
            ],
        )
    )
    if thread_plan.authors:
        statements.append(
            Statement(
                f"INSERT INTO {f} (user_id, root_id, following, last_read_seq, created_at) "
                "SELECT u, r, true, 0, now() FROM unnest(%b::bigint[], %b::bigint[]) AS v(u, r) "
                "ON CONFLICT (user_id, root_id) DO NOTHING",
                [[u for u, _ in thread_plan.authors], [r for _, r in thread_plan.authors]],
            )
        )
    return statements


def write(thread_plan: ThreadPlan) -> None:
    """The plan's writes through the ORM (SQLite)."""
    for root, (count, last, _, _) in thread_plan.counts.items():
        Message.objects.filter(pk=root).update(reply_count=count, last_reply_seq=last)
    if thread_plan.repliers:
        ThreadFollow.objects.bulk_create(
            [
                ThreadFollow(user_id=u, root_id=r, following=True, last_read_seq=s)
                for (u, r), s in thread_plan.repliers.items()
            ],
            update_conflicts=True,
            unique_fields=["user", "root"],
            update_fields=["following", "last_read_seq"],
        )
    if thread_plan.authors:
        ThreadFollow.objects.bulk_create(
            [ThreadFollow(user_id=u, root_id=r, last_read_seq=0) for u, r in thread_plan.authors],
            ignore_conflicts=True,
        )


# --- Deletion -------------------------------------------------------------------------------


def _recount_sql(ids_param: str) -> str:
    m = Message._meta.db_table
    return (
        f"UPDATE {m} SET reply_count = c.n, last_reply_seq = c.s FROM ("
        f"SELECT t.id, COUNT(x.id) AS n, MAX(x.seq) AS s FROM (SELECT DISTINCT thread_id AS id "
        f"FROM {m} WHERE id IN ({ids_param}) AND thread_id IS NOT NULL) t "
        f"LEFT JOIN {m} x ON x.thread_id = t.id AND x.deleted_at IS NULL GROUP BY t.id) c "
        f"WHERE {m}.id = c.id RETURNING {m}.id, {m}.room_id, {m}.reply_count, {m}.last_reply_seq"
    )


def recount_statement(message_ids: list[int]) -> Statement:
    """PostgreSQL, after the deletion of these messages (in the same transaction): the counts
    of the threads they replied in, recounted; returns (root, room, reply_count, last)."""
    return Statement(_recount_sql("SELECT unnest(%b::bigint[])"), [message_ids], True)


def recount(message_ids: list[int]) -> list[tuple]:
    """recount_statement on SQLite."""
    with connection.cursor() as cursor:
        cursor.execute(_recount_sql(", ".join(["%s"] * len(message_ids))), list(message_ids))
        return cursor.fetchall()


def recount_items(rows, actor) -> list[tuple]:
    """thread.updated fan-out items for recount rows."""
    now = timezone.now()
    return [
        (updated_envelope(room, root, count, last, actor=actor, ts=now), (), None)
        for root, room, count, last in rows
    ]
