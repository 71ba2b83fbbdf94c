"""The chaos run: steady chat traffic through two servers, a Celery worker and the broker, while
faults are injected one after another; then every promise of the contract is checked.

Faults, in order, with steady traffic before, between and after them:
  1. SIGKILL of the Celery worker (the outbox publisher), restarted a few seconds later;
  2. a Redis restart (channel layer and Celery broker; a private redis-server, data lost);
  3. the Kafka broker stopped for `broker_outage` seconds, then started again;
  4. a PostgreSQL restart (`postgres_down` seconds between a fast stop, which ends every
     session, and the start): sends answer `unavailable` meanwhile and are resent; the servers
     and the worker reconnect by themselves;
  5. SIGKILL of one server process: its clients reconnect to the other one and resume.

The broker is a private Tansu with memory storage, so a restarted broker is empty. The fault is
a real stop and start (the stronger fault: the publisher's connections break, produce requests
fail and time out); the Kafka check stays exact because a collector reads the topic
continuously in generations, one per broker life (collector.py). Just before the stop the
worker is frozen (SIGSTOP) until the collector holds every event the outbox marks published,
then thawed at once: otherwise an event the broker had acknowledged but the collector had not
yet read would vanish with the broker's memory -- an artifact of the test broker, not a loss by
the system. After the restart the topic is re-created (a real broker keeps its topics).

Everything runs on private instances: its own PostgreSQL cluster (initdb, removed at the end),
its own redis-server and broker on spare ports, its own queue, prefixes and topic.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.chaos.clients import ChaosClient  # noqa: E402
from bench.chaos.collector import Collector  # noqa: E402
from tests.support.processes import CeleryWorker, ServerProcess  # noqa: E402
from tests.support.services import PYTHON, Broker, PostgresCluster, RedisServer  # noqa: E402

KAFKA_TYPES_SQL = "type NOT IN ('typing', 'presence.changed')"
SCRUBBED = {
    "DATABASE_URL",
    "REDIS_URL",
    "KAFKA_BOOTSTRAP_SERVERS",
    "DJANGO_SETTINGS_MODULE",
    "CHANNELS_PREFIX",
    "CELERY_QUEUE",
    "CELERY_BROKER_URL",
    "KAFKA_TOPIC_PREFIX",
    "DATABASE_TEST_NAME",
    "SQLITE_PATH",
    "PROMETHEUS_MULTIPROC_DIR",
    "CHAT_EMBEDDED",
    "CHAT_TEST_RUN_ID",
}


@dataclass
class ChaosConfig:
    clients: int = 12
    rooms: int = 4
    rate: float = 2.0  # messages per second per client
    phase: float = 8.0  # seconds of steady traffic before, between and after faults
    broker_outage: float = 30.0
    worker_down: float = 3.0
    redis_down: float = 2.0
    postgres_down: float = 5.0  # longer than the pool's wait (DATABASE_POOL_TIMEOUT below)
    settle_timeout: float = 90.0


def log(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", flush=True)


FAULTS = 5


def psql(base: str, sql: str, db: str = "postgres", params=None, fetch=True):
    import psycopg

    with psycopg.connect(f"{base}/{db}", autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if fetch and cur.description else None


class ChaosRun:
    def __init__(self, config: ChaosConfig):
        self.config = config
        self.run_id = f"chaos{os.getpid()}{secrets.token_hex(3)}"
        self.db = self.run_id
        self.redis = RedisServer()
        self.broker = Broker()
        self.pg = PostgresCluster()
        self.servers_alive_after_postgres: int | None = None
        self.env: dict = {}
        self.worker: CeleryWorker | None = None
        self.servers: list[ServerProcess] = []
        self.collector: Collector | None = None
        self.faults: list[str] = []
        self.worker_expected_down = False
        self.worker_crashes: list[str] = []

    # --- set-up and tear-down -------------------------------------------------------------------
    def child(self, *args, timeout=180) -> str:
        result = subprocess.run(
            [PYTHON, *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            raise RuntimeError(f"{args} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
        return result.stdout

    def psql(self, sql: str, db: str | None = None, params=None, fetch=True):
        return psql(
            f"postgresql://postgres@127.0.0.1:{self.pg.port}", sql, db or self.db, params, fetch
        )

    def start(self) -> None:
        self.pg.start()
        self.psql(f'CREATE DATABASE "{self.db}"', db="postgres", fetch=False)
        self.redis.start()
        self.broker.start()
        env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
        env.update(
            DJANGO_SETTINGS_MODULE="chatproject.settings",
            DATABASE_URL=f"postgres://postgres@127.0.0.1:{self.pg.port}/{self.db}",
            REDIS_URL=self.redis.url,
            CHANNELS_PREFIX=self.run_id,
            CELERY_QUEUE=self.run_id,
            KAFKA_TOPIC_PREFIX=self.run_id,
            KAFKA_BOOTSTRAP_SERVERS=self.broker.bootstrap,
            ALLOWED_HOSTS="localhost,127.0.0.1",
            PYTHONUNBUFFERED="1",
            DATABASE_POOL_MIN="1",
            # A send waits this long for a database connection, then answers `unavailable`
            # (the client resends): shorter than the PostgreSQL outage, so both are seen.
            DATABASE_POOL_TIMEOUT="2",
            OUTBOX_SWEEP_SECONDS="2",
            OUTBOX_RETRY_MAX_SECONDS="4",
        )
        self.env = env
        self.topic = f"{self.run_id}.events"
        log(f"database {self.db}, redis :{self.redis.port}, broker :{self.broker.port}")
        topics = subprocess.Popen(
            [PYTHON, "manage.py", "kafka_topics", "--wait", "20"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.child("manage.py", "migrate", "--noinput")
        if topics.wait(60) != 0:
            raise RuntimeError(f"kafka_topics failed: {topics.stderr.read()[-2000:]}")
        self.collector = Collector(self.broker.bootstrap, self.topic)
        self.collector.start()
        self.seed = json.loads(
            self.child("-m", "bench.chaos.seed", str(self.config.clients), str(self.config.rooms))
            .strip()
            .splitlines()[-1]
        )
        self.worker = CeleryWorker(self.env, beat=True).start()  # starts while the servers do
        self.servers = [ServerProcess(env).start(), ServerProcess(env).start()]
        self.worker.wait_ready(60)

    def start_worker(self) -> None:
        self.worker = CeleryWorker(self.env, beat=True)
        self.worker.start()
        self.worker.wait_ready(60)

    def stop(self) -> None:
        for proc in [*self.servers, self.worker]:
            if proc is not None:
                proc.signal(signal.SIGCONT)
                proc.stop()
        if self.collector:
            self.collector.stop()
        self.broker.stop()
        self.redis.stop()
        self.pg.destroy()

    # --- faults -----------------------------------------------------------------------------------
    async def supervise_worker(self) -> None:
        """Play the process supervisor (systemd, Kubernetes): restart a worker that exited.

        Every exit we did not cause is recorded: it is a finding, not part of the scenario.
        """
        while True:
            await asyncio.sleep(0.5)
            if not self.worker_expected_down and not self.worker.alive():
                tail = [
                    line
                    for line in self.worker.output().splitlines()
                    if "CRITICAL" in line or "Unrecoverable" in line
                ][-1:]
                self.worker_crashes.append(tail[0][:300] if tail else "exited")
                log(f"the Celery worker exited by itself ({self.worker_crashes[-1]}); restarting")
                await asyncio.to_thread(self.start_worker)

    async def kill_worker(self) -> None:
        log("fault: SIGKILL the Celery worker")
        self.worker_expected_down = True
        self.worker.kill()
        self.faults.append("celery worker SIGKILL")
        await asyncio.sleep(self.config.worker_down)
        await asyncio.to_thread(self.start_worker)
        self.worker_expected_down = False
        log("Celery worker restarted")

    async def restart_redis(self) -> None:
        log("fault: Redis restart")
        port = self.redis.port
        self.redis.stop()
        self.faults.append("redis restart")
        await asyncio.sleep(self.config.redis_down)
        self.redis = RedisServer(port=port)
        await asyncio.to_thread(self.redis.start)
        log("Redis back (empty)")

    async def restart_postgres(self) -> None:
        log("fault: PostgreSQL restart")
        await asyncio.to_thread(self.pg.stop, "fast")
        self.faults.append(f"postgres restart {self.config.postgres_down:g}s")
        await asyncio.sleep(self.config.postgres_down)
        await asyncio.to_thread(self.pg.start)
        await asyncio.sleep(1.0)
        self.servers_alive_after_postgres = sum(server.alive() for server in self.servers)
        log(f"PostgreSQL back; {self.servers_alive_after_postgres} servers alive")

    def published_ids(self) -> set[str]:
        rows = self.psql(
            f"SELECT id::text FROM events_event WHERE {KAFKA_TYPES_SQL} "
            "AND NOT EXISTS (SELECT 1 FROM events_outbox o WHERE o.event_id = events_event.id)"
        )
        return {r[0] for r in rows}

    async def stop_broker(self) -> None:
        log("fault: broker stopped")
        self.worker.signal(signal.SIGSTOP)
        try:
            missing = await asyncio.to_thread(self.collector.wait_for, self.published_ids(), 30)
            if missing:
                log(f"collector did not read {len(missing)} published events before the stop")
            self.collector.stop()
            port = self.broker.port
            self.broker.stop()
        finally:
            self.worker.signal(signal.SIGCONT)
        self.faults.append(f"broker stopped {self.config.broker_outage:g}s")
        await asyncio.sleep(self.config.broker_outage)
        self.broker = Broker(port=port)
        await asyncio.to_thread(self.broker.start)
        await asyncio.to_thread(self.create_topic)
        self.collector.start()
        log("broker started again (empty; topic re-created)")

    def create_topic(self) -> None:
        """What `manage.py kafka_topics` does, without starting Django (KAFKA_PARTITIONS)."""
        from kafka import KafkaAdminClient
        from kafka.admin import NewTopic
        from kafka.errors import TopicAlreadyExistsError

        partitions = int(self.env.get("KAFKA_PARTITIONS", 6))
        deadline = time.monotonic() + 20
        while True:
            try:
                admin = KafkaAdminClient(bootstrap_servers=self.broker.bootstrap)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        try:
            admin.create_topics([NewTopic(self.topic, partitions, 1)])
        except TopicAlreadyExistsError:
            # As manage.py kafka_topics does: it is there. Seen on 2 December: right after the
            # broker's restart the create was answered "already exists" (why, not known: the
            # producers do not create topics) and the run ended on it with a traceback.
            pass
        finally:
            admin.close()

    async def kill_server(self) -> None:
        victim = self.servers[1]
        log(f"fault: SIGKILL server :{victim.port}")
        victim.kill()
        self.faults.append("server process SIGKILL")

    # --- the run ------------------------------------------------------------------------------------
    async def traffic(self) -> list[ChaosClient]:
        cfg = self.config
        clients = [
            ChaosClient(i, token, room, self.servers, home=i % 2)
            for i, (token, room) in enumerate(self.seed["clients"])
        ]
        tasks = [asyncio.create_task(c.run(cfg.rate)) for c in clients]
        tasks.append(asyncio.create_task(self.supervise_worker()))
        try:
            await asyncio.sleep(cfg.phase)
            for fault in (
                self.kill_worker,
                self.restart_redis,
                self.stop_broker,
                self.restart_postgres,
                self.kill_server,
            ):
                await fault()
                await asyncio.sleep(cfg.phase)
            log("traffic stops; waiting for every pending message to be acknowledged")
            for c in clients:
                c.sending = False
            deadline = time.monotonic() + cfg.settle_timeout
            while any(c.pending for c in clients) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            last = dict(self.psql("SELECT id, last_seq FROM rooms_room"))
            remaining = max(1.0, deadline - time.monotonic())
            await asyncio.gather(*(c.settle(last[c.room], remaining) for c in clients))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return clients

    def drain_outbox(self) -> set[str]:
        """Wait for the outbox to publish everything and the collector to read it all."""
        deadline = time.monotonic() + self.config.settle_timeout
        while time.monotonic() < deadline:
            if not self.worker.alive():
                self.worker_crashes.append("exited while draining")
                self.start_worker()
            pending = self.psql(
                f"SELECT count(*) FROM events_event WHERE {KAFKA_TYPES_SQL} "
                "AND EXISTS (SELECT 1 FROM events_outbox o WHERE o.event_id = events_event.id)"
            )[0][0]
            if pending == 0:
                break
            time.sleep(0.5)
        durable = {
            r[0] for r in self.psql(f"SELECT id::text FROM events_event WHERE {KAFKA_TYPES_SQL}")
        }
        self.collector.wait_for(durable, max(5.0, deadline - time.monotonic()))
        time.sleep(1.0)  # late duplicates, if any, are counted too
        return durable

    def check(self, clients: list[ChaosClient], durable: set[str]) -> dict:
        # 1. Every acknowledged message is in PostgreSQL (message row and its event).
        acked = {cid: env for c in clients for cid, env in c.stats.acked.items()}
        rows = self.psql(
            "SELECT m.client_id::text, e.id::text, m.seq, m.room_id "
            "FROM messaging_message m "
            "JOIN events_event e ON e.room_id = m.room_id AND e.seq = m.seq"
        )
        in_db = {r[0]: (r[1], r[2], r[3]) for r in rows}
        lost_acked = [
            cid
            for cid, env in acked.items()
            if in_db.get(cid) != (env["id"], env["seq"], env["room"])
        ]
        bodies = self.psql(
            "SELECT body, count(*) FROM messaging_message GROUP BY body HAVING count(*) > 1"
        )
        # 2. Every durable event is on Kafka, once per id after dedupe, in seq order per room.
        records = sorted(
            self.collector.records, key=lambda r: (r.generation, r.partition, r.offset)
        )
        counts = Counter(r.event_id for r in records)
        on_kafka = set(counts)
        lost_kafka = durable - on_kafka
        phantom = on_kafka - durable
        ids_per_slot = defaultdict(set)
        out_of_order, first_seen, last_seq = 0, set(), {}
        bad_meta = 0
        for r in records:
            if r.room is not None and r.seq is not None:
                ids_per_slot[(r.room, r.seq)].add(r.event_id)
            bad_meta += r.header_id != r.event_id or r.key != (str(r.room) if r.room else r.key)
            if r.event_id in first_seen or r.seq is None:
                continue
            first_seen.add(r.event_id)
            if r.seq <= last_seq.get(r.room, 0):
                out_of_order += 1
            last_seq[r.room] = r.seq
        dup_slots = sum(1 for ids in ids_per_slot.values() if len(ids) > 1)
        # 3. Every client holds its room's full, gapless sequence.
        last = dict(self.psql("SELECT id, last_seq FROM rooms_room"))
        incomplete = [c.index for c in clients if c.stats.seqs != set(range(1, last[c.room] + 1))]
        socket_gaps = sum(c.stats.per_socket_gaps for c in clients)
        socket_dups = sum(c.stats.per_socket_dups for c in clients)
        # Every room log itself is gapless.
        log_gaps = self.psql(
            "SELECT r.id FROM rooms_room r WHERE r.last_seq <> (SELECT count(*) "
            "FROM events_event e WHERE e.room_id = r.id AND e.seq IS NOT NULL)"
        )
        return {
            "faults_injected": len(self.faults),
            "faults": self.faults,
            "worker_crashes": self.worker_crashes,
            "servers_alive_after_postgres": self.servers_alive_after_postgres,
            "messages_acked": len(acked),
            "events_checked": len(durable),
            "kafka_records_read": len(records),
            "kafka_redeliveries": sum(n - 1 for n in counts.values()),
            "lost": len(lost_acked) + len(lost_kafka),
            "lost_acked_messages": len(lost_acked),
            "lost_kafka_events": len(lost_kafka),
            "phantom_kafka_events": len(phantom),
            "duplicated_after_dedupe": dup_slots + len(bodies),
            "kafka_out_of_order": out_of_order,
            "kafka_bad_key_or_header": bad_meta,
            "room_log_gaps": len(log_gaps),
            "clients": len(clients),
            "clients_resumed": sum(c.stats.resumed for c in clients),
            "clients_incomplete": len(incomplete),
            "per_socket_gaps": socket_gaps,
            "per_socket_duplicates": socket_dups,
            "client_errors": dict(sum((Counter(c.stats.errors) for c in clients), Counter())),
            "truncated_replays_paged": sum(c.stats.truncated_pages for c in clients),
            "incomplete_detail": {
                c.index: {
                    "room": c.room,
                    "have": len(c.stats.seqs),
                    "want": last[c.room],
                    "last_error": c.stats.last_error,
                }
                for c in clients
                if c.index in incomplete
            },
        }


def ok(figures: dict) -> bool:
    return (
        all(
            figures[k] == 0
            for k in (
                "lost",
                "phantom_kafka_events",
                "duplicated_after_dedupe",
                "kafka_out_of_order",
                "kafka_bad_key_or_header",
                "room_log_gaps",
                "clients_incomplete",
                "per_socket_gaps",
                "per_socket_duplicates",
            )
        )
        and figures["faults_injected"] == FAULTS
        and figures["messages_acked"] > 0
    )


def run_chaos(config: ChaosConfig) -> dict:
    run = ChaosRun(config)
    started = time.monotonic()
    try:
        run.start()
        log(
            f"{config.clients} clients in {config.rooms} rooms, {config.rate:g} msg/s each, "
            f"two servers :{run.servers[0].port} :{run.servers[1].port}"
        )
        clients = asyncio.run(run.traffic())
        durable = run.drain_outbox()
        figures = run.check(clients, durable)
    finally:
        procs = {"worker": run.worker, **{f"server{i}": s for i, s in enumerate(run.servers)}}
        run.stop()
    figures["log_files"] = {name: p.log.name for name, p in procs.items() if p is not None}
    figures["tracebacks_in_logs"] = sum(
        p.output().count("Traceback") for p in procs.values() if p is not None
    )
    figures["seconds"] = round(time.monotonic() - started, 1)
    figures["config"] = vars(config)
    return figures
