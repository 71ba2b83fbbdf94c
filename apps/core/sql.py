"""Multi-row writes for the send path's group commit, cheaper than bulk_create / bulk_update.

Django 5.2's bulk_create on PostgreSQL sends each column as an array for UNNEST, and psycopg's
client-side binding quotes every array element through a regex; a plain multi-row VALUES makes
psycopg parse a statement with hundreds of placeholders instead. Both were a fifth of the send
path's CPU. On PostgreSQL these statements use server-side binding: one binary array parameter
per column and a statement text that does not depend on the number of rows. Elsewhere (SQLite)
they are plain multi-row statements. Values are prepared by their model fields, as bulk_create
does. A JSON column may be given text already serialized (`Json`): the envelope is serialized
once, for the row, the fan-out and the ack.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import NamedTuple

from django.conf import settings
from django.db import connection, models
from django.utils import timezone


def prepare_statements() -> bool:
    """Whether these fixed-text statements are prepared server-side on each connection (they
    run for every batch; Django prepares nothing by default, for transaction poolers: set
    DATABASE_PREPARE_STATEMENTS=false behind a pooler that cannot keep them)."""
    return getattr(settings, "DATABASE_PREPARE_STATEMENTS", True)


class Json(str):
    """Text that is already the JSON of a JSONField's value: stored as it is."""


class Statement(NamedTuple):
    """One PostgreSQL statement for `run`/`arun`: `fetch` says whether its rows are read."""

    sql: str
    params: list
    fetch: bool = False


def combine(statements: list[Statement]) -> Statement:
    """Several writes as one statement (data-modifying WITH clauses): one execute, and one
    pass of psycopg's pipeline, instead of one each. Only the last may read rows back (its
    RETURNING is the statement's)."""
    if len(statements) == 1:
        return statements[0]
    *first, last = statements
    assert not any(s.fetch for s in first), "only the last statement may return rows"
    clauses = ", ".join(f"w{i} AS ({s.sql})" for i, s in enumerate(first))
    return Statement(
        f"WITH {clauses} {last.sql}", [p for s in statements for p in s.params], last.fetch
    )


def run(statements: list[Statement]) -> list:
    """Execute the statements on Django's connection, all sent before any result is read
    (inside a psycopg pipeline that is one round trip), and return each one's rows (None
    where `fetch` is false). Server-side binding, prepared per connection if configured."""
    import psycopg

    connection.ensure_connection()
    prepare = prepare_statements()
    cursors = []
    for statement in statements:
        cursor = psycopg.Cursor(connection.connection)
        cursor.execute(statement.sql, statement.params, prepare=prepare)
        cursors.append(cursor)
    try:
        return [c.fetchall() if s.fetch else None for c, s in zip(cursors, statements, strict=True)]
    finally:
        for cursor in cursors:
            cursor.close()


async def arun(conn, statements: list[Statement]) -> list:
    """`run` on a psycopg AsyncConnection."""
    prepare = prepare_statements()
    cursors = []
    for statement in statements:
        cursor = conn.cursor()
        await cursor.execute(statement.sql, statement.params, prepare=prepare)
        cursors.append(cursor)
    try:
        return [
            await c.fetchall() if s.fetch else None
            for c, s in zip(cursors, statements, strict=True)
        ]
    finally:
        for cursor in cursors:
            await cursor.close()


def pg_insert(model, fields: list[str], rows: list[tuple], *, returning: str | None = None):
    """PostgreSQL INSERT of the rows: one binary array parameter per column (the statement
    text is the same for any number of rows, so it is parsed, and prepared, once)."""
    sql, preparers = _pg_insert_layout(model, tuple(fields), returning)
    params = []
    for index, prep in enumerate(preparers):
        values = [row[index] for row in rows]
        params.append(values if prep is None else [prep(v) for v in values])
    return Statement(sql, params, bool(returning))


def _json_text(encoder):
    """A JSON column's value as text for a `text[]` parameter (cast to jsonb in the SELECT)."""

    def prepare(value):
        return str(value) if isinstance(value, Json) else json.dumps(value, cls=encoder)

    return prepare


_insert_layouts: dict = {}


def _pg_insert_layout(model, fields: tuple, returning):
    """The statement text and each column's preparer (None: as given) for pg_insert, built once per
    (model, fields, returning, connection vendor): the send path runs it for every batch, and
    asking the model fields for their database types each time was a twentieth of a send."""
    key = (model, fields, returning, connection.vendor)
    found = _insert_layouts.get(key)
    if found is not None:
        return found
    meta = model._meta
    fields_ = [meta.get_field(name) for name in fields]
    quote = connection.ops.quote_name
    preparers, casts, selects = [], [], []
    for index, field in enumerate(fields_):
        if isinstance(field, models.JSONField):
            preparers.append(_json_text(field.encoder))
            casts.append("text")
            selects.append(f"c{index}::jsonb")
        else:
            prep = _preparer(field)
            preparers.append(None if prep is _identity else prep)
            casts.append(field.db_type(connection))
            selects.append(f"c{index}")
    unnest = ", ".join(f"%b::{db_type}[]" for db_type in casts)
    aliases = ", ".join(f"c{i}" for i in range(len(fields_)))
    tail = f" RETURNING {quote(meta.get_field(returning).column)}" if returning else ""
    sql = (
        f"INSERT INTO {quote(meta.db_table)} ({', '.join(quote(f.column) for f in fields_)}) "
        f"SELECT {', '.join(selects)} FROM unnest({unnest}) AS t({aliases}){tail}"
    )
    found = _insert_layouts[key] = (sql, preparers)
    return found


def pg_update(
    model, column: str, values: dict[int, int], *, add: bool = False, returning: str | None = None
):
    """PostgreSQL `column = value` (or `column + value`) for each {pk: integer}."""
    meta = model._meta
    quote = connection.ops.quote_name
    table, col, pk = (
        quote(meta.db_table),
        quote(meta.get_field(column).column),
        quote(meta.pk.column),
    )
    ids = list(values)
    tail = (
        f" RETURNING {table}.{pk}, {table}.{quote(meta.get_field(returning).column)}"
        if returning
        else ""
    )
    return Statement(
        f"UPDATE {table} SET {col} = {f'{table}.{col} + ' if add else ''}v.value "
        f"FROM unnest(%b::bigint[], %b::bigint[]) AS v(id, value) WHERE {table}.{pk} = v.id" + tail,
        [ids, [values[i] for i in ids]],
        bool(returning),
    )


def insert_rows(model, fields: list[str], rows: list[tuple], *, returning: str | None = None):
    """INSERT the rows (tuples of values in `fields` order, foreign keys by their `_id`
    attname) in one statement; with `returning`, that column of each row, in row order."""
    if not rows:
        return []
    if connection.vendor == "postgresql":
        found = run([pg_insert(model, fields, rows, returning=returning)])[0]
        return [row[0] for row in found] if returning else []
    meta = model._meta
    columns = [meta.get_field(name) for name in fields]
    quote = connection.ops.quote_name
    prep = [_preparer(field) for field in columns]
    placeholder = "(" + ", ".join(["%s"] * len(columns)) + ")"
    sql = (
        f"INSERT INTO {quote(meta.db_table)} ({', '.join(quote(f.column) for f in columns)}) "
        f"VALUES {', '.join([placeholder] * len(rows))}"
    )
    if returning:
        sql += f" RETURNING {quote(meta.get_field(returning).column)}"
    params = [p(value) for row in rows for p, value in zip(prep, row, strict=True)]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [row[0] for row in cursor.fetchall()] if returning else []


def update_by_pk(
    model, column: str, values: dict[int, int], *, add: bool = False, returning: str | None = None
):
    """`column = value` (or `column + value` with `add`) for each {pk: integer} in one
    statement; with `returning`, the (pk, returning) rows. Without it nothing is read back,
    so in a pipeline it does not wait for the server."""
    if connection.vendor == "postgresql":
        return run([pg_update(model, column, values, add=add, returning=returning)])[0]
    meta = model._meta
    quote = connection.ops.quote_name
    table, col, pk = (
        quote(meta.db_table),
        quote(meta.get_field(column).column),
        quote(meta.pk.column),
    )
    ids = list(values)
    cases = " ".join(["WHEN %s THEN %s"] * len(ids))
    tail = f" RETURNING {pk}, {quote(meta.get_field(returning).column)}" if returning else ""
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET {col} = {f'{col} + ' if add else ''}CASE {pk} {cases} END "
            f"WHERE {pk} IN ({', '.join(['%s'] * len(ids))}){tail}",
            [v for key in ids for v in (key, values[key])] + ids,
        )
        return cursor.fetchall() if returning else None


def _preparer(field):
    if isinstance(field, models.JSONField):

        def prepare_json(value):
            if isinstance(value, Json):
                return str(value)
            return field.get_db_prep_save(value, connection)

        return prepare_json
    if (
        isinstance(
            field, (models.BigIntegerField, models.IntegerField, models.TextField, models.CharField)
        )
        and not field.is_relation
    ):
        return _identity
    if connection.vendor == "postgresql" and isinstance(
        field, (models.ForeignKey, models.UUIDField, models.DateTimeField)
    ):
        # What get_db_prep_save returns there for ints, UUIDs and aware datetimes.
        return _native
    return lambda value: field.get_db_prep_save(value, connection)


def _identity(value):
    return value


def _native(value):
    if isinstance(value, datetime) and timezone.is_naive(value):
        raise ValueError("naive datetime")
    return value
