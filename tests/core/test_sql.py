"""apps/core/sql.py: multi-row INSERT and UPDATE statements, run on the real database
(PostgreSQL: server-side binding and pipelines; SQLite: plain multi-row statements)."""

import asyncio
import uuid
from datetime import datetime

import pytest
from django.db import connection
from django.utils import timezone

from apps.core.sql import Json, Statement, arun, combine, insert_rows, run, update_by_pk
from apps.events.catalogue import DURABLE_TYPES
from apps.events.models import Event
from apps.rooms.models import Room

ROOM_FIELDS = [
    "name",
    "topic",
    "kind",
    "created_at",
    "last_seq",
    "slow_mode_seconds",
    "post_policy",
    "history_start",
]
postgres_only = pytest.mark.skipif(
    "connection.vendor != 'postgresql'", reason="PostgreSQL statements"
)


def room_row(name, *, last_seq=0):
    return (name, "", "public", timezone.now(), last_seq, 0, "everyone", 1)


@pytest.mark.django_db
def test_insert_rows_writes_every_row_and_returns_the_column_in_row_order():
    ids = insert_rows(
        Room, ROOM_FIELDS, [room_row(f"bulk {n}", last_seq=n) for n in range(3)], returning="id"
    )
    assert len(ids) == 3 and ids == sorted(ids)
    stored = list(Room.objects.filter(pk__in=ids).order_by("pk").values_list("name", "last_seq"))
    assert stored == [("bulk 0", 0), ("bulk 1", 1), ("bulk 2", 2)]


@pytest.mark.django_db
def test_insert_rows_of_nothing_runs_nothing():
    before = Room.objects.count()
    assert insert_rows(Room, ROOM_FIELDS, [], returning="id") == []
    assert Room.objects.count() == before


@pytest.mark.django_db
def test_a_json_column_takes_text_already_serialized_as_it_is():
    ids = [uuid.uuid4(), uuid.uuid4()]
    rows = [
        (ids[0], DURABLE_TYPES[0], timezone.now(), Json('{"kept": "as text", "n": 1}')),
        (ids[1], DURABLE_TYPES[0], timezone.now(), {"made": ["by", "the field"]}),
    ]
    insert_rows(Event, ["id", "type", "ts", "envelope"], rows)
    stored = dict(Event.objects.filter(pk__in=ids).values_list("pk", "envelope"))
    assert stored == {ids[0]: {"kept": "as text", "n": 1}, ids[1]: {"made": ["by", "the field"]}}


@pytest.mark.django_db
def test_update_by_pk_sets_or_adds_and_returns_the_new_values():
    ids = insert_rows(
        Room, ROOM_FIELDS, [room_row("a", last_seq=5), room_row("b", last_seq=7)], returning="id"
    )
    rows = update_by_pk(Room, "last_seq", {ids[0]: 10, ids[1]: 1}, add=True, returning="last_seq")
    assert sorted(rows) == [(ids[0], 15), (ids[1], 8)]
    assert update_by_pk(Room, "last_seq", {ids[0]: 3}) is None  # nothing read back
    assert dict(Room.objects.filter(pk__in=ids).values_list("pk", "last_seq")) == {
        ids[0]: 3,
        ids[1]: 8,
    }


@postgres_only
@pytest.mark.django_db
def test_run_sends_every_statement_and_reads_only_those_that_fetch():
    ids = insert_rows(Room, ROOM_FIELDS, [room_row("r")], returning="id")
    results = run(
        [
            Statement("UPDATE rooms_room SET last_seq = last_seq + %b WHERE id = %b", [2, ids[0]]),
            Statement("SELECT last_seq FROM rooms_room WHERE id = %b", [ids[0]], True),
        ]
    )
    assert results == [None, [(2,)]]


@postgres_only
@pytest.mark.django_db
def test_combine_makes_several_writes_one_statement():
    ids = insert_rows(Room, ROOM_FIELDS, [room_row("x"), room_row("y")], returning="id")
    one = combine(
        [
            Statement("UPDATE rooms_room SET topic = %b WHERE id = %b", ["first", ids[0]]),
            Statement("UPDATE rooms_room SET topic = %b WHERE id = %b", ["second", ids[1]]),
        ]
    )
    assert one.sql.startswith("WITH w0 AS (UPDATE") and one.params == [
        "first",
        ids[0],
        "second",
        ids[1],
    ]
    assert run([one]) == [None]
    assert list(Room.objects.filter(pk__in=ids).order_by("pk").values_list("topic", flat=True)) == [
        "first",
        "second",
    ]
    # Only the last statement may read rows back (its RETURNING is the combined one's).
    assert combine([one, Statement("SELECT 1", [], True)]).fetch is True
    with pytest.raises(AssertionError, match="only the last statement may return rows"):
        combine([Statement("SELECT 1", [], True), one])


@postgres_only
@pytest.mark.django_db
def test_a_naive_datetime_is_refused_not_stored_in_the_wrong_zone():
    with pytest.raises(ValueError, match="naive datetime"):
        insert_rows(
            Room, ROOM_FIELDS, [("naive", "", "public", datetime(2026, 1, 1), 0, 0, "everyone", 1)]
        )


@postgres_only
@pytest.mark.django_db
def test_arun_runs_statements_on_an_async_connection():
    import psycopg

    db = connection.settings_dict

    async def scenario():
        conn = await psycopg.AsyncConnection.connect(
            dbname=db["NAME"],
            user=db["USER"] or "postgres",
            host=db["HOST"] or "127.0.0.1",
            port=db["PORT"] or 5432,
            password=db["PASSWORD"] or None,
        )
        try:
            return await arun(
                conn,
                [Statement("SELECT %b::bigint + 1", [41], True), Statement("SELECT 1", [], False)],
            )
        finally:
            await conn.close()

    assert asyncio.run(scenario()) == [[(42,)], None]
