"""The message table's indexes (messaging 0010): every send writes each one, so there are
only those the queries need, and the mostly-NULL columns' are partial."""

import pytest
from django.db import connection

pytestmark = pytest.mark.django_db

EXPECTED = {
    "messaging_message_pkey": "(id)",
    "message_author_client_id": "(author_id, client_id)",
    "message_room_seq": "(room_id, seq)",
    "message_search_vector": "gin (search_vector)",
    "message_thread_seq": "(thread_id, seq) WHERE (thread_id IS NOT NULL)",
    "message_reply_to": "(reply_to_id) WHERE (reply_to_id IS NOT NULL)",
    "message_deleted_by": "(deleted_by_id) WHERE (deleted_by_id IS NOT NULL)",
}


def _needs_postgres():
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's catalogue and plans")


def test_the_message_table_has_exactly_the_indexes_its_queries_use():
    _needs_postgres()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'messaging_message'"
        )
        found = dict(cursor.fetchall())
    assert set(found) == set(EXPECTED)
    for name, shape in EXPECTED.items():
        assert shape in found[name], (name, found[name])


@pytest.mark.parametrize(
    "query, index",
    [
        ("SELECT id FROM messaging_message WHERE thread_id = 7 ORDER BY seq", "message_thread_seq"),
        ("SELECT id FROM messaging_message WHERE reply_to_id = ANY('{1,2}')", "message_reply_to"),
        ("SELECT id FROM messaging_message WHERE deleted_by_id = 3", "message_deleted_by"),
        ("SELECT id FROM messaging_message WHERE room_id = 3 ORDER BY seq", "message_room_seq"),
        ("SELECT 1 FROM messaging_message WHERE author_id = 3", "message_author_client_id"),
    ],
)
def test_lookups_by_each_foreign_key_still_have_an_index(query, index):
    """What the foreign keys' ON DELETE and the thread and history reads ask for."""
    _needs_postgres()
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("EXPLAIN " + query)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert index in plan, plan
