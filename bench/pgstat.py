"""The database's side of a benchmark step: `pg_stat_statements` and sampled wait events.

`bench.writes --pg-statements` runs the ladder against a private PostgreSQL cluster (initdb on
a spare port, `tests.support.services.PostgresCluster`) started with `pg_stat_statements`
loaded and fsync on: the machine's own server does not load the library, and the benchmarks
must not restart it. For each step it prints the statements that took the most execution time
(calls per send batch, mean ms, execution ms per acked send, WAL bytes per acked send: the
volume each commit's flush writes) and what the bench database's
sessions were waiting on, sampled every 20 ms (`pg_stat_activity.wait_event`: a lock, the WAL
flush, the client's next statement).
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import psycopg

SETTINGS = {
    "shared_preload_libraries": "pg_stat_statements",
    "pg_stat_statements.track": "all",  # the foreign-key checks' statements too
    "fsync": "on",
    "shared_buffers": "128MB",
}


def start_cluster():
    """A private cluster with pg_stat_statements; the caller destroys it."""
    from tests.support.services import PostgresCluster

    cluster = PostgresCluster(settings=SETTINGS).start()
    with psycopg.connect(cluster.url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    return cluster


class StepStatements:
    """Reset the statistics at a step's start; `report` reads them and the sampled waits."""

    def __init__(self, admin_url: str, db_name: str, interval: float = 0.02):
        self.admin_url, self.db_name, self.interval = admin_url, db_name, interval
        self.waits: Counter = Counter()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self) -> StepStatements:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute("SELECT pg_stat_statements_reset()")
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _sample(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            while not self._stop.is_set():
                rows = conn.execute(
                    "SELECT state, wait_event_type, wait_event FROM pg_stat_activity "
                    "WHERE datname = %s AND backend_type = 'client backend' "
                    "AND pid <> pg_backend_pid()",
                    [self.db_name],
                ).fetchall()
                self.samples += 1
                for state, kind, event in rows:
                    if state == "active":
                        self.waits[f"{kind}:{event}" if kind else "running (on CPU)"] += 1
                    elif state == "idle in transaction":
                        self.waits["idle in transaction (the client's turn)"] += 1
                time.sleep(self.interval)

    def report(self, acked: int, batches: int | None, top: int = 14) -> dict:
        """The step's top statements, every statement's execution per acked send, and the
        sampled waits."""
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT s.calls, s.total_exec_time, s.rows, s.wal_bytes, "
                "regexp_replace(s.query, '\\s+', ' ', "
                "'g') FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
                "WHERE d.datname = %s ORDER BY s.total_exec_time DESC LIMIT %s",
                [self.db_name, top],
            ).fetchall()
            total_ms, total_wal = conn.execute(
                "SELECT coalesce(sum(s.total_exec_time), 0), coalesce(sum(s.wal_bytes), 0) "
                "FROM pg_stat_statements s "
                "JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s",
                [self.db_name],
            ).fetchone()
        return {
            "statements": [
                {
                    "calls": calls,
                    "per_batch": round(calls / batches, 2) if batches else None,
                    "mean_ms": round(ms / calls, 3) if calls else 0.0,
                    "ms_per_send": round(ms / acked, 4) if acked else None,
                    "rows": n,
                    "wal_bytes_per_send": round(wal / acked) if acked else None,
                    "query": query,
                }
                for calls, ms, n, wal, query in rows
            ],
            "total_ms_per_send": round(total_ms / acked, 4) if acked else None,
            "wal_bytes_per_send": round(total_wal / acked) if acked else None,
            "waits": self.wait_shares(),
        }

    def wait_shares(self) -> list[tuple[str, float]]:
        """Per wait: sessions seen in it per sample (1.0: one session, all the time)."""
        if not self.samples:
            return []
        return [(k, n / self.samples) for k, n in self.waits.most_common(8)]


def lines(report: dict) -> str:
    """A step's report (StepStatements.report) as the lines under its step line."""
    out = [
        f"        database execution per acked send: {report['total_ms_per_send']} ms, "
        f"WAL {report['wal_bytes_per_send']} bytes (pg_stat_statements)"
    ]
    for s in report["statements"]:
        out.append(
            f"          {s['ms_per_send']:>7} ms/send  {s['mean_ms']:>8} ms x "
            f"{s['per_batch'] if s['per_batch'] is not None else s['calls']} per batch  "
            f"WAL {s['wal_bytes_per_send']:>5} B/send  {s['query'][:90]}"
        )
    if report["waits"]:
        out.append(
            "        sessions by wait (mean per sample): "
            + ", ".join(f"{name} {share:.2f}" for name, share in report["waits"])
        )
    return "\n".join(out)
