"""The PostgreSQL executor of the send plan: round trips per batch, counted on the wire (libpq's
trace, tests/support/roundtrips.py), on Django's connection and on an asyncio one.

Before the send plan (main at 5e909ee) a batch took 6 round trips on a database thread
(7 with a resend of an earlier batch) and 5 (6) on the asyncio connection."""

import asyncio
import uuid

import psycopg
import pytest
from django.db import connection, transaction

from apps.messaging.services import SendRequest, amessage_send_many, message_send_many
from apps.rooms import services as rooms
from tests import factories
from tests.support.roundtrips import RoundTrips
from tests.support.services import postgresql_only

pytestmark = [
    postgresql_only("the PostgreSQL executor's round trips"),
    pytest.mark.django_db(transaction=True),
]

TRIPS = 4  # BEGIN, the reads, the writes, COMMIT
ASYNC_TRIPS = 2  # BEGIN with the reads, the writes with COMMIT


@pytest.fixture
def scene():
    owner, member = factories.make_user(), factories.make_user()
    plain = factories.make_room(owner, members=[member])
    slow = factories.make_room(owner, members=[member])
    rooms.room_update(room=slow, actor=owner, slow_mode_seconds=60)
    earlier = factories.send(plain, owner, "earlier")
    return owner, member, plain, slow, earlier


def batch(scene, size=3, *, slow=False, resend=False):
    owner, member, plain, slow_room, earlier = scene
    requests = [
        SendRequest(
            plain.pk,
            owner,
            f"m{i}",
            uuid.uuid4(),
            earlier.envelope["data"]["id"] if i == 0 else None,
        )
        for i in range(size)
    ]
    if slow:
        requests.append(SendRequest(slow_room.pk, member, "slow", uuid.uuid4()))
    if resend:
        requests.append(
            SendRequest(plain.pk, owner, "again", earlier.envelope["data"]["client_id"])
        )
    return requests


def thread_trips(requests):
    connection.ensure_connection()
    with RoundTrips(connection.connection.pgconn) as trips:
        results = message_send_many(requests)
    assert not [r for r in results if isinstance(r, Exception)]
    return trips.count


def test_a_batch_on_a_database_thread_takes_four_round_trips_whatever_its_size(scene):
    message_send_many(batch(scene))  # the first batch on the connection prepares its statements
    assert thread_trips(batch(scene)) == TRIPS
    assert thread_trips(batch(scene, size=50)) == TRIPS
    # The slow-mode stamp is one more write in the same statement: no round trip of its own.
    assert thread_trips(batch(scene, slow=True)) == TRIPS
    # Reading the original event of an earlier batch's message is one more.
    assert thread_trips(batch(scene, resend=True)) == TRIPS + 1


def test_a_batch_on_the_asyncio_connection_takes_two_round_trips_whatever_its_size(scene):
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)

    async def scenario():
        counts = []
        async with await psycopg.AsyncConnection.connect(**params, autocommit=True) as conn:
            await amessage_send_many(conn, batch(scene))
            for requests in (
                batch(scene),
                batch(scene, size=50),
                batch(scene, slow=True),
                batch(scene, resend=True),
            ):
                with RoundTrips(conn.pgconn) as trips:
                    results = await amessage_send_many(conn, requests)
                assert not [r for r in results if isinstance(r, Exception)]
                counts.append(trips.count)
        return counts

    assert asyncio.run(scenario()) == [ASYNC_TRIPS] * 3 + [ASYNC_TRIPS + 1]


def test_a_failed_write_on_the_asyncio_connection_commits_nothing(scene, monkeypatch):
    """COMMIT rides in the writes' round trip: a statement that fails there aborts the rest of
    the pipeline, COMMIT included, so none of the batch's writes is kept and the error reaches
    the lane (which drops the connection and retries on the thread path)."""
    from apps.core.sql import Statement
    from apps.messaging import send_pg
    from apps.messaging.models import Message
    from apps.rooms.models import Room

    owner, member, plain, slow_room, earlier = scene
    real_arun = send_pg.arun

    async def arun_then_fail(conn, statements):
        if not any(s.fetch for s in statements):  # the writes: then a statement that fails
            statements = [*statements, Statement("SELECT 1 / 0", [])]
        return await real_arun(conn, statements)

    last_seq = Room.objects.get(pk=plain.pk).last_seq
    monkeypatch.setattr(send_pg, "arun", arun_then_fail)
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)

    async def scenario():
        async with await psycopg.AsyncConnection.connect(**params, autocommit=True) as conn:
            with pytest.raises(psycopg.errors.DivisionByZero):
                await amessage_send_many(conn, batch(scene))
            # The connection is usable again, outside any transaction.
            await conn.rollback()
            return conn.info.transaction_status

    status = asyncio.run(scenario())
    assert status == psycopg.pq.TransactionStatus.IDLE
    assert Message.objects.filter(room=plain).count() == 1  # only the scene's earlier message
    assert Room.objects.get(pk=plain.pk).last_seq == last_seq


def test_the_asyncio_batch_refuses_a_connection_in_a_transaction_of_psycopgs():
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)

    async def scenario():
        async with await psycopg.AsyncConnection.connect(**params, autocommit=False) as conn:
            from apps.messaging import send_pg

            with pytest.raises(ValueError, match="autocommit"):
                await send_pg.asend_batch(conn, [], [])

    asyncio.run(scenario())


def test_the_asyncio_batch_holds_its_room_locks_from_the_reads_to_the_commit(scene, monkeypatch):
    """The reads and the writes are one transaction: between them another session cannot lock
    the room (the reads' FOR UPDATE is held, so the seqs follow commit order), and once the
    batch is done the room is free and the connection is outside any transaction."""
    from apps.messaging import send_pg
    from apps.messaging.models import Message

    owner, member, plain, slow_room, earlier = scene
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    seen = {}
    real_write = send_pg.write_statement

    def probe(statement_sql):
        with psycopg.connect(**params, autocommit=True) as other:
            try:
                other.execute(statement_sql, [plain.pk])
                return "free"
            except psycopg.errors.LockNotAvailable:
                return "locked"

    def write_then_look(decision, reads):
        seen["between"] = probe("SELECT 1 FROM rooms_room WHERE id = %s FOR UPDATE NOWAIT")
        return real_write(decision, reads)

    monkeypatch.setattr(send_pg, "write_statement", write_then_look)

    async def scenario():
        async with await psycopg.AsyncConnection.connect(**params, autocommit=True) as conn:
            results = await amessage_send_many(conn, batch(scene))
            seen["after"] = probe("SELECT 1 FROM rooms_room WHERE id = %s FOR UPDATE NOWAIT")
            seen["status"] = conn.info.transaction_status
            return results

    results = asyncio.run(scenario())
    assert not [r for r in results if isinstance(r, Exception)]
    assert seen["between"] == "locked"
    assert seen["after"] == "free"
    assert seen["status"] == psycopg.pq.TransactionStatus.IDLE
    assert Message.objects.filter(room=plain).count() == 4  # the earlier one and the batch's 3


def test_the_reads_look_up_the_batchs_own_room_author_and_author_client_pairs():
    """Two authors, each a member of both rooms and each with an earlier send, send one message
    each to a different room, the first a resend: the reads return the two memberships and the
    one earlier send asked about, not every room x author (or author x client id) combination,
    which a batch of n sends from n authors probed n * n times."""
    from apps.core.sql import run
    from apps.messaging import send_pg
    from apps.messaging import send_plan as plan
    from apps.rooms.models import Membership

    a, b = factories.make_user(), factories.make_user()
    first = factories.make_room(a, members=[b])
    second = factories.make_room(a, members=[b])
    resent = uuid.UUID(factories.send(first, a, "a's earlier").envelope["data"]["client_id"])
    factories.send(second, b, "b's earlier")
    todo = [
        plan.Send(0, first.pk, a, "again", resent, None),
        plan.Send(1, second.pk, b, "new", uuid.uuid4(), None),
    ]
    with transaction.atomic(), connection.connection.pipeline():
        rows = run(send_pg.read_statements(plan.keys(todo), len(todo)))

    columns = [f.column for f in Membership._meta.concrete_fields]
    room, user = columns.index("room_id"), columns.index("user_id")
    assert sorted((row[room], row[user]) for row in rows[1]) == sorted(
        [(first.pk, a.pk), (second.pk, b.pk)]
    )
    assert [(author, client) for author, client, _, _ in rows[2]] == [(a.pk, resent)]
