"""Attachments in the send path (message.send, REST send; single and batched, both databases).

Small functions, inputs to statements or rows, each called from one place of the send plan
(apps.messaging.send_plan and its executors send_pg, send_orm): the batch reads the listed
uploads with its other reads (locked: two sends cannot take one upload; `read_statement`
shares the reads' round trip on PostgreSQL, `read` elsewhere), the plan checks each send's
list under the room locks (`check`) and puts them in message.created (`data`), and the
`attachment_links` extra write links them to the new messages with the batch's writes
(`link_statement`, combined into its one write statement; `link` elsewhere), so an attachment
is linked in the send's own transaction at no extra round trip.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import connection

from apps.core.errors import invalid
from apps.core.sql import Statement

from .models import Upload
from .services import event_data

_COLUMNS = [f'"{f.column}"' for f in Upload._meta.concrete_fields]


def clean(value) -> tuple[uuid.UUID, ...]:
    """`attachments` of a send: a list of distinct upload ids (at most UPLOAD_MAX_PER_MESSAGE)."""
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise invalid("attachments must be a list of upload ids", field="attachments")
    if len(value) > settings.UPLOAD_MAX_PER_MESSAGE:
        raise invalid(
            f"at most {settings.UPLOAD_MAX_PER_MESSAGE} attachments per message",
            field="attachments",
        )
    ids = []
    for item in value:
        if isinstance(item, uuid.UUID):
            ids.append(item)
            continue
        try:
            ids.append(uuid.UUID(item if isinstance(item, str) and len(item) <= 64 else ""))
        except ValueError:
            raise invalid("attachments must be a list of upload ids", field="attachments") from None
    if len(set(ids)) != len(ids):
        raise invalid("an upload is listed twice in attachments", field="attachments")
    return tuple(ids)


def read_statement(upload_ids: list) -> Statement:
    """PostgreSQL: the listed uploads, locked (with the batch's other reads)."""
    return Statement(
        f"SELECT {', '.join(_COLUMNS)} FROM {Upload._meta.db_table} "
        "WHERE id = ANY(%b::uuid[]) ORDER BY id FOR UPDATE",
        [list(upload_ids)],
        True,
    )


def from_rows(rows) -> dict:
    uploads = (Upload.from_db(connection.alias, None, row) for row in rows)
    return {upload.pk: upload for upload in uploads}


def read(upload_ids: list) -> dict:
    """The listed uploads, locked (the ORM path: SQLite)."""
    if not upload_ids:
        return {}
    return {u.pk: u for u in Upload.objects.select_for_update().filter(pk__in=upload_ids)}


def check(upload_ids, author_id: int, uploads: dict, claimed: set) -> None:
    """Each listed upload exists, is the author's own and was never sent (nor taken by an
    earlier send of this batch: `claimed`, which this adds to once all pass)."""
    for upload_id in upload_ids:
        upload = uploads.get(upload_id)
        if upload is None or upload.owner_id != author_id:
            raise invalid(f"attachments: no upload {upload_id} of yours", field="attachments")
        if upload.message_id is not None or upload_id in claimed:
            raise invalid(f"attachments: upload {upload_id} is already sent", field="attachments")
    claimed.update(upload_ids)


def data(upload_ids, uploads: dict) -> list[dict]:
    """The `attachments` of message.created (apps.attachments.services.event_data)."""
    return [event_data(uploads[upload_id]) for upload_id in upload_ids]


def links(sends_and_ids) -> list[tuple]:
    """(upload id, message id, position) for each (attachment ids, message id)."""
    return [
        (upload_id, message_id, position)
        for upload_ids, message_id in sends_and_ids
        for position, upload_id in enumerate(upload_ids)
    ]


def link_statement(rows: list[tuple]) -> Statement:
    """PostgreSQL: attach the uploads (one UPDATE for the batch, combined with its writes)."""
    table = Upload._meta.db_table
    return Statement(
        f'UPDATE {table} SET message_id = v.message_id, "position" = v.position '
        "FROM unnest(%b::uuid[], %b::bigint[], %b::smallint[]) AS v(id, message_id, position) "
        f"WHERE {table}.id = v.id",
        [[r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]],
    )


def link(rows: list[tuple]) -> None:
    """Attach the uploads (the ORM path: SQLite)."""
    for upload_id, message_id, position in rows:
        Upload.objects.filter(pk=upload_id).update(message_id=message_id, position=position)
