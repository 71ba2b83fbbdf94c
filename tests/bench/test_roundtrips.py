"""The counting proxies' protocol parsers (bench/roundtrips.py): pure functions, no services.
A real psycopg pipeline through the proxy is checked against PostgreSQL in the second test."""

import struct

import pytest

from bench.roundtrips import PgClientParser, Proxies, RedisClientParser


def pg_message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def test_the_pg_parser_maps_executions_to_their_prepared_text_across_chunks():
    stream = (
        pg_message(b"P", b"s1\0SELECT 1\0\0\0")
        + pg_message(b"B", b"\0s1\0" + b"\0" * 6)
        + pg_message(b"E", b"\0\0\0\0\0")
        + pg_message(b"S", b"")
        + pg_message(b"Q", b"COMMIT\0")
    )
    parser = PgClientParser()
    executed = []
    for start in range(0, len(stream), 7):  # the bytes arrive in arbitrary pieces
        executed += parser.feed(stream[start : start + 7])
    assert executed == ["SELECT 1", "COMMIT"]
    assert parser.waits == 2  # the Sync and the simple Query


def test_the_redis_parser_names_each_command_of_a_pipeline():
    parser = RedisClientParser()
    stream = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n*2\r\n$7\r\nevalsha\r\n$2\r\nab\r\nPING\r\n"
    assert parser.feed(stream[:20]) == []
    assert parser.feed(stream[20:]) == ["SET", "EVALSHA", "PING"]


@pytest.mark.services
def test_a_pipeline_through_the_proxy_is_counted_as_its_statements():
    import psycopg

    proxies = Proxies()
    try:
        url = f"postgresql://postgres@127.0.0.1:{proxies.pg.listen_port}/postgres"
        with psycopg.connect(url, autocommit=False) as conn:
            cursors = [conn.cursor() for _ in range(3)]
            with conn.pipeline():
                for cursor in cursors:
                    cursor.execute("SELECT %s::int", [7])
            assert [c.fetchall() for c in cursors] == [[(7,)]] * 3
            conn.commit()
        figures, statements, _ = proxies.counts.snapshot()
        assert statements["SELECT $1::int"] == 3
        assert statements["BEGIN"] == 1 and statements["COMMIT"] == 1
        assert figures["pg_connections"] == 1
    finally:
        proxies.stop()
