"""bench/pgstat.py, the database side of `bench.writes --pg-statements`: against a real private
cluster with pg_stat_statements (the machine's own server does not load it)."""

import psycopg
import pytest

from bench import pgstat
from bench.stack import url_with_database
from tests.support.services import postgresql_only

pytestmark = postgresql_only("a private PostgreSQL cluster")


@pytest.fixture(scope="module")
def cluster():
    cluster = pgstat.start_cluster()
    try:
        yield cluster
    finally:
        cluster.destroy()


def test_a_step_reports_its_statements_per_batch_and_per_send(cluster):
    with psycopg.connect(cluster.url, autocommit=True) as conn:
        conn.execute("CREATE DATABASE pgstat_step")
        assert conn.execute("SHOW fsync").fetchone() == ("on",)
    url = url_with_database(cluster.url, "pgstat_step")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
        with pgstat.StepStatements(cluster.url, "pgstat_step", interval=0.005) as step:
            for batch in range(4):
                with conn.transaction():
                    conn.execute(
                        "INSERT INTO t SELECT g FROM generate_series(%s::int, %s::int) g",
                        [batch * 10, batch * 10 + 9],
                    )
                    conn.execute("SELECT count(*) FROM t")
                    conn.execute("SELECT pg_sleep(0.02)")
    report = step.report(acked=40, batches=4)
    total = report["total_ms_per_send"]
    by_text = {s["query"]: s for s in report["statements"]}
    insert = next(s for q, s in by_text.items() if q.startswith("INSERT INTO t"))
    assert insert["calls"] == 4 and insert["per_batch"] == 1.0 and insert["rows"] == 40
    sleep = next(s for q, s in by_text.items() if "pg_sleep" in q)
    assert sleep["mean_ms"] >= 20 and sleep["ms_per_send"] >= 2.0
    assert total >= sleep["ms_per_send"] + insert["ms_per_send"]
    # 40 rows of a 4-byte key and their index entries: tens of WAL bytes a row, the sleep none
    assert 40 <= insert["wal_bytes_per_send"] <= 1000 and sleep["wal_bytes_per_send"] == 0
    assert report["wal_bytes_per_send"] >= insert["wal_bytes_per_send"]
    assert step.samples > 0 and report["waits"] == step.wait_shares()
    text = pgstat.lines(report)
    assert "database execution per acked send" in text and "INSERT INTO t" in text
    assert f"WAL {report['wal_bytes_per_send']} bytes" in text
