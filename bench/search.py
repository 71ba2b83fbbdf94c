"""Search benchmark (PROTOCOL §8): message search over a large history, with the visibility rule.

    .venv/bin/python -m bench.search                               # 1,000,000 messages, 1,000 rooms
    .venv/bin/python -m bench.search --messages 100000 --runs 30   # a quicker look

Its own PostgreSQL database `benchsearch<pid>` (created, migrated, dropped WITH (FORCE)); no
server, broker or worker: what is measured is the search service (apps.messaging.search:
the query the REST view runs, with its reactions prefetch and highlights) in this process.

Seeding, in SQL (generate_series), after the rooms and users (bulk rows, not under test):
--rooms rooms (a fifth of them private), --users users, each a member of --memberships rooms;
--messages messages spread over the rooms, 8 words each drawn from a skewed vocabulary (a few
very common words, a long tail of rare ones), and the phrase "quarterly budget review" in one
message of a thousand. The GIN index is built after the rows (as a restore would), then ANALYZE.

Queries, each --runs times, alternating a member of many rooms and a user who reads only
public rooms (the visibility filter differs): one word (common, medium, rare) and phrases
(the planted one, and two common words). Prints p50/p95 per query beside the limit measured
in the same run: a plain SELECT of one message by primary key through the ORM. The target:
p95 <= 50 ms for one-word and phrase queries.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import time

from bench import stats
from bench.stack import PG_ADMIN_URL, ROOT, machine, stop_cleanly_on_sigterm
from tests.support.services import PYTHON

P95_BOUND_MS = 50.0
COMMON = [
    "the",
    "and",
    "to",
    "we",
    "is",
    "it",
    "for",
    "on",
    "this",
    "that",
    "with",
    "ok",
    "deploy",
    "meeting",
    "today",
    "tomorrow",
    "please",
    "thanks",
    "review",
    "build",
]
PLANTED = "quarterly budget review"

QUERIES = [
    ("one word, common", "deploy"),
    ("one word, medium", "w0150"),
    ("one word, rare", "w4500"),
    ("phrase, planted", f'"{PLANTED}"'),
    ("phrase, common words", '"deploy today"'),
    ("two words", "meeting tomorrow"),
]


def seed(args) -> tuple[list, list]:
    """Rooms, users, memberships (ORM bulk rows) and the messages (SQL). Returns two users:
    (a member of --memberships rooms, public rooms only) as [user]."""
    from django.contrib.auth import get_user_model
    from django.db import connection

    from apps.messaging.search import PG_INDEX
    from apps.rooms.models import Membership, Room

    User = get_user_model()
    users = User.objects.bulk_create(
        [User(username=f"s{i}", username_key=f"s{i}") for i in range(args.users)]
    )
    rooms = Room.objects.bulk_create(
        [
            Room(
                name=f"room {i}",
                kind="private" if i % 5 == 0 else "public",
                created_by=users[i % len(users)],
            )
            for i in range(args.rooms)
        ]
    )
    rng = random.Random(7)
    memberships = {(users[0].pk, r.pk) for r in rng.sample(rooms, args.memberships)}
    for user in users[2:]:
        memberships.update((user.pk, r.pk) for r in rng.sample(rooms, 5))
    Membership.objects.bulk_create(
        [Membership(user_id=u, room_id=r, role="member") for u, r in memberships], batch_size=5000
    )
    words = COMMON + [f"w{i:04d}" for i in range(5000)]
    room_ids = [r.pk for r in rooms]
    author_ids = [u.pk for u in users]
    started = time.monotonic()
    with connection.cursor() as cursor:
        cursor.execute(f"DROP INDEX IF EXISTS {PG_INDEX}")
        cursor.execute("SET maintenance_work_mem = '256MB'")
        # Word k of a message: vocabulary[floor(n * u^3)] for a uniform u: skewed to the
        # first (common) words; one message in 1,000 carries the planted phrase.
        cursor.execute(
            "INSERT INTO messaging_message (room_id, author_id, body, client_id, seq, created_at, "
            "reply_count) "
            "SELECT rooms[1 + g %% %s], authors[1 + (g / 7) %% %s], "
            "CASE WHEN g %% 1000 = 1 THEN %s || ' ' ELSE '' END || "
            "(SELECT string_agg(words[1 + floor(%s * power(random(), 3))::int + 0 * k], ' ') "
            " FROM generate_series(1, 8) k WHERE g >= 0), "
            "gen_random_uuid(), 1 + g / %s, now() - (%s - g) * interval '1 second', 0 "
            "FROM generate_series(0, %s - 1) g, "
            "(SELECT %s::bigint[] AS rooms, %s::bigint[] AS authors, %s::text[] AS words) v",
            [
                len(room_ids),
                len(author_ids),
                PLANTED,
                len(words),
                len(room_ids),
                args.messages,
                args.messages,
                room_ids,
                author_ids,
                words,
            ],
        )
        cursor.execute(
            "UPDATE rooms_room r SET last_seq = m.top FROM (SELECT room_id, "
            "max(seq) AS top FROM messaging_message GROUP BY room_id) m "
            "WHERE r.id = m.room_id"
        )
        inserted = time.monotonic()
        cursor.execute(f"CREATE INDEX {PG_INDEX} ON messaging_message USING gin (search_vector)")
        indexed = time.monotonic()
        cursor.execute("ANALYZE")
    print(
        f"seeded {args.messages:,} messages in {args.rooms:,} rooms: insert "
        f"{inserted - started:.0f} s (tsvector computed by the generated column), GIN index "
        f"{indexed - inserted:.0f} s"
    )
    return users[0], users[1]


def timed(fn, runs) -> dict:
    """p50/p95/max in ms of `runs` calls."""
    values = []
    for _ in range(runs):
        started = time.perf_counter_ns()
        fn()
        values.append(time.perf_counter_ns() - started)
    values.sort()
    return {
        "p50_ms": stats.percentile(values, 0.50) / 1e6,
        "p95_ms": stats.percentile(values, 0.95) / 1e6,
        "max_ms": values[-1] / 1e6,
    }


def run(args) -> None:
    from django.db import connection

    from apps.messaging import search
    from apps.messaging.api import with_reactions
    from apps.messaging.models import Message

    member, outsider = seed(args)
    with connection.cursor() as cursor:
        cursor.execute("SELECT min(id), max(id) FROM messaging_message")
        low, high = cursor.fetchone()
    rng = random.Random(1)

    def by_pk():
        Message.objects.filter(pk=rng.randint(low, high)).first()

    for _ in range(20):  # warm the caches the same for every query
        by_pk()
    limit = timed(by_pk, args.runs * 4)
    print(f"\n{machine()}")
    print(
        f"limit: SELECT one message by pk (ORM): p50 {limit['p50_ms']:.2f} ms, "
        f"p95 {limit['p95_ms']:.2f} ms\n"
    )
    limit_db = db_times(by_pk_sql(low, high, rng), args.runs)
    print(
        f"limit in the database (EXPLAIN ANALYZE, planning + execution): p50 "
        f"{limit_db['p50_ms']:.2f} ms, p95 {limit_db['p95_ms']:.2f} ms\n"
    )
    print(
        f"{'query':26} {'q':26} {'who':9} {'hits':>5} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'max ms':>8}  vs pk p95  {'db p50':>7} {'db p95':>7}"
    )
    worst = 0.0
    for label, q in QUERIES:
        for who, user in (("member", member), ("outsider", outsider)):
            hits = len(search.search_messages(user, q, prepare=with_reactions).messages)
            figures = timed(
                lambda u=user, q=q: search.search_messages(u, q, prepare=with_reactions), args.runs
            )
            worst = max(worst, figures["p95_ms"])
            db = db_times(lambda u=user, q=q: first_sql(search, u, q, with_reactions), args.runs)
            print(
                f"{label:26} {q:26} {who:9} {hits:>5} {figures['p50_ms']:>8.2f} "
                f"{figures['p95_ms']:>8.2f} {figures['max_ms']:>8.2f}  "
                f"{figures['p95_ms'] / max(limit['p95_ms'], 1e-6):>8.0f}x  {db['p50_ms']:>7.2f} "
                f"{db['p95_ms']:>7.2f}"
            )
    for _, q in QUERIES if args.explain_all else QUERIES[:1]:
        explain(search, member, q, with_reactions)
    print(
        f"\nworst p95 {worst:.1f} ms: target <= {P95_BOUND_MS:.0f} ms "
        f"{'MET' if worst <= P95_BOUND_MS else 'NOT MET'}; {machine()}"
    )


def first_sql(search, user, q, prepare) -> str:
    """The SQL of the search query (the statement with the highlights; the service runs it
    after a SET LOCAL, and the prefetches after it)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        search.search_messages(user, q, prepare=prepare)
    return search_statement(queries.captured_queries)


def search_statement(captured) -> str:
    return next(query["sql"] for query in captured if "ts_headline" in query["sql"])


def by_pk_sql(low, high, rng):
    return lambda: f"SELECT * FROM messaging_message WHERE id = {rng.randint(low, high)}"


def db_times(make_sql, runs) -> dict:
    """p95 of planning + execution time reported by EXPLAIN ANALYZE (the database's share,
    without this process's Python), over `runs` runs of the statement make_sql() returns."""
    from django.db import connection, transaction

    from apps.messaging.search import NO_PARALLEL_WORKERS

    values = []
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(NO_PARALLEL_WORKERS)  # as the search service runs its statement
        for _ in range(runs):
            cursor.execute("EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) " + make_sql())
            plan = cursor.fetchone()[0]
            plan = plan[0] if isinstance(plan, list) else json.loads(plan)[0]
            values.append((plan["Planning Time"] + plan["Execution Time"]) * 1e6)
    values.sort()
    return {
        "p50_ms": stats.percentile(values, 0.50) / 1e6,
        "p95_ms": stats.percentile(values, 0.95) / 1e6,
    }


def explain(search, user, q, prepare) -> None:
    """The plan of the search query (the first statement the service runs), as executed."""
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext

    from apps.messaging.search import NO_PARALLEL_WORKERS

    with CaptureQueriesContext(connection) as queries:
        search.search_messages(user, q, prepare=prepare)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(NO_PARALLEL_WORKERS)
        cursor.execute(
            "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + search_statement(queries.captured_queries)
        )
        plan = "\n".join(row[0] for row in cursor.fetchall())
    print(f"\nplan of {q!r} for the member ({len(queries.captured_queries)} statements):\n{plan}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--rooms", type=int, default=1000)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument(
        "--memberships", type=int, default=100, help="rooms the measured member belongs to"
    )
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--explain-all", action="store_true", help="print every query's plan")
    args = parser.parse_args()
    stop_cleanly_on_sigterm()
    import psycopg

    name = f"benchsearch{os.getpid()}"
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="chatproject.settings",
        DEBUG="false",
        DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{name}",
        SECRET_KEY="bench-search-not-secret",
        CHAT_EMBEDDED="0",
    )
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        subprocess.run(
            [PYTHON, str(ROOT / "manage.py"), "migrate", "--noinput", "-v", "0"],
            env=env,
            cwd=ROOT,
            check=True,
        )
        os.environ.update(env)
        import django

        django.setup()
        run(args)
    finally:
        from django.db import connections

        connections.close_all()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
