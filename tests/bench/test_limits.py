"""bench.limits.CommitProbe against the machine's PostgreSQL, in a scratch database of its own:
what it measures, what it leaves, and that a failing commit is counted, not raised."""

import time
import uuid

import psycopg
import pytest

from bench import limits
from bench.limits import PG_ADMIN, CommitProbe, commit_note
from bench.stack import url_with_database


@pytest.fixture
def scratch_url():
    name = f"probe_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url_with_database(PG_ADMIN, name)
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.mark.services
def test_the_probe_times_one_committed_row_per_interval(scratch_url):
    with CommitProbe(scratch_url, interval=0.02) as probe:
        time.sleep(0.5)
    figures = probe.summary()
    with psycopg.connect(scratch_url) as conn:
        rows = conn.execute("SELECT count(*) FROM bench_commit_probe").fetchone()[0]
    assert rows == figures["count"] == len(probe.latencies)  # each timed insert committed
    assert 5 <= figures["count"] <= 25  # about one per 20 ms of the 0.5 s
    assert 0 < figures["p50_ms"] <= figures["max_ms"] == round(max(probe.latencies) * 1000, 1)
    assert figures["failures"] == 0
    assert commit_note(figures) == (
        f"  db commit p50 {figures['p50_ms']} max {figures['max_ms']} ms"
    )


@pytest.mark.services
def test_a_failing_commit_is_counted_and_the_probe_goes_on(scratch_url):
    with CommitProbe(scratch_url, interval=0.02) as probe:
        time.sleep(0.1)
        with psycopg.connect(scratch_url, autocommit=True) as conn:
            conn.execute("DROP TABLE bench_commit_probe")
        time.sleep(0.2)
    figures = probe.summary()
    assert figures["failures"] >= 3
    assert figures["count"] >= 1  # the commits before the drop
    assert commit_note(figures).endswith(f", {figures['failures']} failed")


def test_no_note_without_commits():
    assert commit_note(None) == ""
    assert commit_note({"count": 0, "p50_ms": None, "max_ms": None, "failures": 2}) == ""


def test_the_machine_line_gives_each_process_and_the_rest_in_percent_of_a_core(monkeypatch):
    monkeypatch.setattr(limits.os, "cpu_count", lambda: 2)
    summary = limits.machine_summary(
        0.56, 2.0, {"server": 0.92, "clients": 0.78, "postgres": 0.8, "redis": 0.0}
    )
    assert summary == {
        "cores": 2,
        "busy_pct": 172,
        "shares_pct": {"server": 46, "clients": 39, "postgres": 40, "redis": 0},
    }
    assert limits.machine_note(summary) == (
        "machine 172% of 200% busy (server 46, postgres 40, clients 39; other 47)"
    )
    assert limits.machine_note(None) == ""


def test_the_machines_idle_seconds_grow_while_this_process_sleeps():
    before = limits.machine_idle_seconds()
    time.sleep(0.3)
    assert limits.machine_idle_seconds() > before > 0
