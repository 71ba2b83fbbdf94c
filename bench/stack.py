"""What a benchmark runs against: the whole chat stack, or the ceiling server, started and stopped.

`ChatStack` creates its own PostgreSQL database (dropped at the end), starts a private
Kafka-compatible broker, creates the topic, starts a Celery worker with beat on its own queue
(as bin/run does) and one server process (`python -m chatproject.serve`). Redis is the
machine's; every key lives under a unique prefix, deleted at the end. Users, tokens and rooms are
made through the services, in this process (Django is set up on the bench database).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.processes import CeleryWorker, ChildProcess, ServerProcess  # noqa: E402
from tests.support.services import PYTHON, Broker, free_port, wait_port  # noqa: E402

# BENCH_PG: another cluster (a private one with pg_stat_statements loaded, say: bench/README.md).
PG_ADMIN_URL = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def url_with_database(url: str, name: str) -> str:
    """The PostgreSQL URL `url` with the database `name` in place of its own."""
    return url.rsplit("/", 1)[0] + f"/{name}"


# Raised for the bench (documented in bench/README.md): the production defaults (5 messages/s
# per socket) would refuse the benchmark's own senders. Nothing else differs from production.
BENCH_SETTINGS = {
    "CHAT_RATE_LIMIT_MESSAGES": "100000",
    "CHAT_RATE_LIMIT_PER_SECOND": "100000",
}

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as handle:
        return int(handle.read().split()[1]) * PAGE_SIZE


def tree_pids(pid: int) -> list[int]:
    """pid and all its descendants (daphne runs in one process; celery forks its pool)."""
    pids, frontier = [pid], [pid]
    while frontier:
        parent = frontier.pop()
        try:
            with open(f"/proc/{parent}/task/{parent}/children") as handle:
                children = [int(c) for c in handle.read().split()]
        except OSError:
            children = []
        pids += children
        frontier += children
    return pids


def tree_cpu_seconds(pid: int) -> float:
    total = 0.0
    for child in tree_pids(pid):
        try:
            total += cpu_seconds(child)
        except OSError:
            pass
    return total


class CeilingServer(ChildProcess):
    """bench/ceiling.py under daphne on a spare port."""

    name = "ceiling"

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        super().__init__(
            [PYTHON, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "bench.ceiling:app"],
            env,
        )

    def start(self, timeout: float = 30.0):
        super().start()
        wait_port("127.0.0.1", self.port, timeout=timeout, proc=self.proc)
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid


class ChatStack:
    """The production stack on private names: database, broker, topic, worker, one server."""

    def __init__(
        self,
        *,
        settings: dict | None = None,
        worker: bool = True,
        log=print,
        kafka: bool = True,
        server: bool = True,
        workers: int = 1,
    ):
        tag = f"bench{os.getpid()}"
        self.tag = tag
        self.db_name = tag
        self.log = log
        self.worker_wanted = worker
        self.kafka_wanted, self.server_wanted = kafka, server  # bench/webhooks.py needs neither
        self.workers = workers  # server processes on the port (chatproject.workers)
        self.broker: Broker | None = None
        self.worker: CeleryWorker | None = None
        self.server: ServerProcess | None = None
        self.db_created = False
        self.env = dict(os.environ)
        self.env.update(
            DJANGO_SETTINGS_MODULE="chatproject.settings",
            DATABASE_URL=url_with_database(PG_ADMIN_URL, self.db_name),
            REDIS_URL=REDIS_URL,
            CHANNELS_PREFIX=tag,
            CELERY_QUEUE=tag,
            KAFKA_TOPIC_PREFIX=tag,
            ALLOWED_HOSTS="127.0.0.1,localhost",
            DEBUG="false",
            SECRET_KEY=secrets.token_urlsafe(48),
            PYTHONUNBUFFERED="1",
            PYTHONPATH=str(ROOT),
        )
        self.env.update(BENCH_SETTINGS)
        if not kafka:
            self.env["KAFKA_BOOTSTRAP_SERVERS"] = ""  # publishing off
        self.env.update(settings or {})
        self.extra = dict(settings or {})
        if any(self.env.get(k) for k in ("BENCH_SWITCH_INTERVAL", "BENCH_STALL_MS", "BENCH_GC_MS")):
            self.env["PYTHONPATH"] = f"{ROOT / 'bench' / 'tuning'}:{ROOT}"

    @property
    def database_url(self) -> str:
        return self.env["DATABASE_URL"]

    @property
    def topic(self) -> str:
        return f"{self.tag}.events"

    def start(self) -> ChatStack:
        started = time.monotonic()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self.log(
            f"stack up in {time.monotonic() - started:.1f}s "
            f"(db {self.db_name}, broker {self.env.get('KAFKA_BOOTSTRAP_SERVERS', 'none')}, "
            + (
                f"server :{self.server.port} pid {self.server.proc.pid})"
                if self.server
                else "no server)"
            )
            + (f" experiment settings {self.extra}" if self.extra else "")
        )
        return self

    def _start(self) -> None:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.db_name}"')
        self.db_created = True
        if self.kafka_wanted:
            self.broker = Broker().start()
            self.env["KAFKA_BOOTSTRAP_SERVERS"] = self.broker.bootstrap
        manage = [PYTHON, str(ROOT / "manage.py")]
        subprocess.run(
            manage + ["migrate", "--noinput", "-v", "0"], env=self.env, cwd=ROOT, check=True
        )
        if self.kafka_wanted:
            subprocess.run(
                manage + ["kafka_topics", "--wait", "20"],
                env=self.env,
                cwd=ROOT,
                check=True,
                stdout=subprocess.DEVNULL,
            )
        # This process makes the users and rooms through the services, on the same database.
        os.environ.update(self.env)
        import django

        django.setup()
        if self.worker_wanted:
            self.worker = CeleryWorker(self.env, beat=True, concurrency=2).start()
            self.worker.wait_ready(60)
        if self.server_wanted:
            self.server = ServerProcess(self.env, workers=self.workers).start()

    def __enter__(self) -> ChatStack:
        return self.start()

    def __exit__(self, kind, exc, tb) -> None:
        if exc is not None and self.server is not None:
            print("server log tail:\n" + self.server_log_tail(), file=sys.stderr)
        if os.environ.get("BENCH_SERVER_LOG") and self.server is not None:
            # The whole server log, for a look at what it said during the run.
            Path(os.environ["BENCH_SERVER_LOG"]).write_text(self.server.output())
        self.stop()

    @property
    def port(self) -> int:
        return self.server.port

    def batch_figures(self) -> dict[str, float]:
        """The server's group-commit counters from /metrics: batches, sends in them, seconds."""
        import urllib.request

        figures = {"batches": 0.0, "sends": 0.0, "seconds": 0.0}
        names = {
            "chat_send_batch_size_count": "batches",
            "chat_send_batch_size_sum": "sends",
            "chat_send_batch_seconds_sum": "seconds",
        }
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
                for line in r.read().decode().splitlines():
                    name, _, value = line.partition(" ")
                    if name in names:
                        figures[names[name]] += float(value)
        except OSError:
            pass
        return figures

    @property
    def pid(self) -> int:
        return self.server.proc.pid

    def stop(self) -> None:
        for child in (self.server, self.worker):
            if child is not None:
                child.stop()
        if self.broker is not None:
            self.broker.stop()
        try:
            from django.db import connections

            connections.close_all()
        except Exception:
            pass
        if self.db_created:
            import psycopg

            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
            self.db_created = False
        self._clean_redis()

    def _clean_redis(self) -> None:
        """Delete this run's keys (channel layer, cache, Celery queue): only our own prefix."""
        try:
            import redis

            client = redis.Redis.from_url(REDIS_URL)
            keys = list(client.scan_iter(match=f"{self.tag}*", count=1000))
            keys += list(client.scan_iter(match=f":*:{self.tag}*", count=1000))
            # kombu's exchange bindings for our Celery queue
            keys += list(client.scan_iter(match=f"_kombu.binding*.{self.tag}", count=1000))
            for start in range(0, len(keys), 500):
                client.delete(*keys[start : start + 500])
        except Exception as exc:  # never fail a run over clean-up
            self.log(f"redis clean-up failed: {exc}")

    def server_log_tail(self, chars: int = 3000) -> str:
        return self.server.output()[-chars:] if self.server else ""


# --- Seeding through the services ------------------------------------------------------------


def make_users(count: int, prefix: str) -> list[tuple[int, str]]:
    """count users with tokens: [(user id, token key)]. Bulk rows: users are not under test."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import make_password
    from rest_framework.authtoken.models import Token

    from apps.users.models import username_key

    User = get_user_model()
    password = make_password(secrets.token_urlsafe(12))
    users = User.objects.bulk_create(  # bulk_create skips save(): the key is set here
        [
            User(
                username=f"{prefix}{i}",
                username_key=username_key(f"{prefix}{i}"),
                password=password,
            )
            for i in range(count)
        ],
        batch_size=1000,
    )
    tokens = Token.objects.bulk_create(
        [Token(user=user, key=Token.generate_key()) for user in users], batch_size=1000
    )
    return [(token.user_id, token.key) for token in tokens]


def make_room(owner_id: int, member_ids: list[int], name: str) -> int:
    """A public room with its members, created through the room service (events and all)."""
    from django.contrib.auth import get_user_model
    from django.db import connection

    from apps.rooms import services as rooms

    try:
        owner = get_user_model().objects.get(pk=owner_id)
        room = rooms.room_create(
            creator=owner, name=name, member_ids=[m for m in member_ids if m != owner_id]
        )
        return room.pk
    finally:
        connection.close()  # seeding threads return their pooled connection


def make_rooms(specs: list[tuple[int, list[int], str]], threads: int = 8) -> list[int]:
    """make_room for each (owner, members, name), on a few threads (rooms lock separately)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda spec: make_room(*spec), specs))


def machine() -> str:
    """Host, cores and load average, for the header of every run (figures drift with load)."""
    import platform

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{platform.node()}, {os.cpu_count()} cores, load {load}"


def stop_cleanly_on_sigterm() -> None:
    """SIGTERM (`timeout`, a supervisor) unwinds like Ctrl-C, so the `with`/`finally` blocks
    stop the server, worker and broker and drop the database instead of leaving them behind."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
