"""The Kafka bridge: publish committed outbox rows (Event) in per-room seq order.

Rules this module relies on:
- One publisher at a time. On PostgreSQL a session advisory lock is held around the whole drain
  loop; tasks that wait for it drain whatever is left when they get it. On SQLite (embedded
  mode) an flock on a file next to the database does the same between local processes.
- A room's rows are read in seq order. A row with seq N+1 is visible only after seq N committed
  (seq is allocated under the room row lock), so a room's pending rows are always a suffix of
  its log and are sent oldest first.
- A row leaves the outbox (Outbox, its own table) only after the broker acknowledged it, and
  only up to a room's first failure: the rest of that room waits for the failed row's retry
  (exponential backoff, no deadline).
- A room's later row never reaches Kafka before an earlier one that failed. Each flush sends at
  most one producer batch per partition (flush_rows: a partition's rows stop at KAFKA_BATCH_SIZE
  bytes, the rest wait for the next flush, and the producer's linger outlasts the send loop, so
  no batch leaves half-filled), and the broker appends a batch whole or not at all: within a
  flush a room's rows all succeed or all fail. The next flush starts after every ack of this
  one, and a failed room sends nothing until its head's retry. So a retried row is never behind
  a later row of its room on the topic; it may only repeat (a row that reached Kafka but whose
  ack was lost is sent again with the same event id: at least once, consumers deduplicate on
  id).

Why ~420 lines in one module: it is one job, the drain loop, and its rules above are read with
it (the batch read, the per-partition flush plan, the publisher lock, the outcome per room).
"""

from __future__ import annotations

import logging
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import NamedTuple

from django.conf import settings
from django.db import OperationalError, connection, transaction
from django.utils import timezone

from . import kafka
from .catalogue import CATALOGUE, DURABLE_TYPES
from .models import Event, Outbox
from .observability import KAFKA_PUBLISH_ERRORS, KAFKA_PUBLISH_LATENCY, KAFKA_PUBLISHED

logger = logging.getLogger(__name__)

KAFKA_TYPES = tuple(t for t, spec in CATALOGUE.items() if spec.kafka and spec.persisted)
# Every persisted type goes to Kafka (today's catalogue): the outbox needs no type filter.
ALL_TYPES_TO_KAFKA = set(KAFKA_TYPES) == set(DURABLE_TYPES)
# pg_advisory_lock key of the publisher ("chat-outbox" folded into a bigint). Advisory locks
# are per database, so test runs on their own databases never wait for each other.
PUBLISHER_LOCK_KEY = 0x63686174_6F757462
# A drain loop yields after this long so a sweep or kick can run on the same worker.
MAX_DRAIN_SECONDS = 30.0
# The kick task keeps the lock and polls this long after the outbox ran empty, so a steady
# stream of commits is published by one task instead of one task per commit (a Celery task
# cost ~5 ms of worker CPU, a poll ~0.3 ms); see apps.events.tasks.publish_outbox.
IDLE_SECONDS = 0.25
IDLE_POLL_SECONDS = 0.02
# How often a draining kick task renews its debounce key (OUTBOX_KICK_DEBOUNCE_MS, 1 s by
# default): renewed well before it expires, so commits during a long drain queue no tasks.
KEEP_ALIVE_SECONDS = 0.2


@dataclass
class DrainResult:
    published: int = 0
    failed: int = 0
    batches: int = 0
    locked: bool = True
    more: bool = False  # stopped at max_seconds with rows left
    last_read: bool = False  # before_last_read ran and the outbox was read after it
    errors: list[str] = field(default_factory=list)


def backoff_seconds(attempts: int) -> float:
    """Exponential: base * 2^(attempts-1), capped at OUTBOX_RETRY_MAX_SECONDS."""
    base = settings.OUTBOX_RETRY_BASE_SECONDS
    return min(settings.OUTBOX_RETRY_MAX_SECONDS, base * (2 ** max(0, attempts - 1)))


def pending_rows():
    """The outbox rows that go to Kafka."""
    if ALL_TYPES_TO_KAFKA:
        return Outbox.objects.all()
    return Outbox.objects.filter(event__type__in=KAFKA_TYPES)


class Row(NamedTuple):
    pk: str  # the event id as the envelope spells it
    room_id: int | None
    type: str
    value: str  # the envelope's JSON text, as the database stores it (sent as is)
    publish_attempts: int


# Raw SQL: this runs for every batch at the full send rate, and building it with the ORM cost
# more CPU than running it. One statement: the rooms whose head is backing off (the small
# partial index outbox_retry, materialized once), then the batch in per-room seq order from the
# outbox's index outbox_order, stopping at the limit, and only then the limited rows' events by
# primary key. It stays cheap when the planner's statistics are stale (a backlog written faster
# than autovacuum analyzes it): the anti-join probes the few blocked rooms, not the table, per
# row. The envelope comes back as the JSON text the database holds, converted for the returned
# rows only, and is never parsed and serialized again here.
_TABLE = Outbox._meta.db_table
_EVENTS = Event._meta.db_table
_TYPE_FILTER = (
    ""
    if ALL_TYPES_TO_KAFKA
    else f"AND EXISTS (SELECT 1 FROM {_EVENTS} t WHERE t.id = o.event_id "
    f"AND t.type IN ({', '.join(repr(t) for t in KAFKA_TYPES)}))"
)
_NEXT_BATCH_SQL = f"""
    WITH blocked AS MATERIALIZED (
        SELECT DISTINCT room_id FROM {_TABLE}
        WHERE next_attempt_at IS NOT NULL AND next_attempt_at > %s)
    SELECT {{id}}, p.room_id, e.type, {{envelope}}, p.publish_attempts FROM (
        SELECT o.event_id, o.room_id, o.publish_attempts, o.seq, o.ts
        FROM {_TABLE} o
        WHERE NOT EXISTS (SELECT 1 FROM blocked b WHERE b.room_id = o.room_id
                          OR (b.room_id IS NULL AND o.room_id IS NULL)) {_TYPE_FILTER}
        ORDER BY o.room_id, o.seq NULLS LAST, o.ts, o.event_id
        LIMIT %s) p
    JOIN {_EVENTS} e ON e.id = p.event_id
    ORDER BY p.room_id, p.seq NULLS LAST, p.ts, p.event_id
"""


def next_batch(limit: int) -> list[Row]:
    """The next rows to send, oldest first per room, skipping rooms whose head is backing off."""
    postgres = connection.vendor == "postgresql"
    sql = _NEXT_BATCH_SQL.format(
        id="p.event_id::text" if postgres else "p.event_id",
        envelope="e.envelope::text" if postgres else "e.envelope",
    )
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    with connection.cursor() as cursor:
        cursor.execute(sql, [now, limit])
        rows = cursor.fetchall()
    if postgres:
        return [Row(*values) for values in rows]
    # SQLite keeps UUIDs as bare hex.
    return [Row(str(uuid.UUID(values[0])), *values[1:]) for values in rows]


def mark_published(rows: list[Row]) -> None:
    """One DELETE of a batch's acknowledged rows from the outbox."""
    if connection.vendor == "postgresql":
        # One array literal for the ids (they are UUID text: nothing to quote).
        where, params = "event_id = ANY(%s::uuid[])", ["{" + ",".join(row.pk for row in rows) + "}"]
    else:
        where = f"event_id IN ({', '.join(['%s'] * len(rows))})"
        params = [uuid.UUID(row.pk).hex for row in rows]
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {_TABLE} WHERE {where}", params)


class Vacuum:
    """VACUUM the outbox after every OUTBOX_VACUUM_EVERY_ROWS rows this process deleted.

    Every published row leaves a dead tuple in the outbox's heap and index entries behind.
    Autovacuum visits a table at most once a minute (autovacuum_naptime), so at 1,000 sends/s
    the next-batch query had up to a minute of dead rows to step over and cost 4.5-4.7 ms; with
    this VACUUM, 0.44-0.48 ms (bench/RESULTS.md, 3 December, afternoon). A VACUUM of the small
    table costs 2-12 ms. It cannot run inside a transaction: it is skipped there (tests).
    """

    deleted = 0

    @classmethod
    def count(cls, rows: int) -> None:
        every = settings.OUTBOX_VACUUM_EVERY_ROWS
        if not every or connection.vendor != "postgresql":
            return
        cls.deleted += rows
        if cls.deleted < every or connection.in_atomic_block:
            return
        cls.deleted = 0
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"VACUUM (SKIP_LOCKED) {_TABLE}")
        except Exception:  # noqa: BLE001 - autovacuum still comes; publishing goes on
            logger.warning("outbox: VACUUM failed", exc_info=True)


@contextmanager
def publisher_lock(*, wait: bool = True):
    """Yield True while this process is the only publisher (False: another one held it too
    long, or at all when `wait` is false)."""
    if connection.vendor != "postgresql":
        with file_lock(wait=wait) as locked:
            yield locked
        return
    with connection.cursor() as cursor:
        # The common case, no other publisher: one round trip.
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [PUBLISHER_LOCK_KEY])
        (locked,) = cursor.fetchone()
    if not locked and not wait:
        yield False
        return
    if not locked:
        timeout_ms = int(settings.OUTBOX_LOCK_TIMEOUT_SECONDS * 1000)
        try:
            _wait_for_lock(timeout_ms)
        except OperationalError:
            logger.info(
                "outbox publisher lock busy for %sms; leaving the rows to its holder", timeout_ms
            )
            yield False
            return
    try:
        yield True
    finally:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [PUBLISHER_LOCK_KEY])
        except Exception:
            # The session must not go back to the connection pool still holding the lock
            # (every later publisher would wait on it): end it.
            if connection.connection is not None:
                connection.connection.close()
            connection.close()
            raise


def _wait_for_lock(timeout_ms: int) -> None:
    """Wait at most timeout_ms for the advisory lock (OperationalError when it stays busy)."""
    with transaction.atomic(), connection.cursor() as cursor:
        # Session-level lock taken inside a transaction: the bounded lock_timeout is local
        # to it, the lock outlives it (and dies with the session if the worker is killed).
        cursor.execute("SELECT set_config('lock_timeout', %s, true)", [f"{timeout_ms}ms"])
        cursor.execute("SELECT pg_advisory_lock(%s)", [PUBLISHER_LOCK_KEY])


@contextmanager
def file_lock(*, wait: bool = True):
    """SQLite (embedded mode): an flock next to the database file serializes the publishers."""
    import fcntl

    path = f"{settings.DATABASES['default']['NAME']}.outbox.lock"
    deadline = time.monotonic() + settings.OUTBOX_LOCK_TIMEOUT_SECONDS
    with open(path, "a") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not wait or time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.05)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def publish_pending(
    *,
    max_seconds: float = MAX_DRAIN_SECONDS,
    idle_seconds: float = 0.0,
    before_last_read=None,
    wait_for_lock: bool = True,
    keep_alive=None,
) -> DrainResult:
    """Publish every pending outbox row (until empty, a failure, or max_seconds).

    With idle_seconds, an empty outbox is polled that long before the drain ends. Then
    before_last_read() runs, if given, and the outbox is read once more (drained again if
    anything is there), so a row committed before that call is never left behind.
    With wait_for_lock false it returns at once (locked false) when another publisher runs:
    that one drains what is there. keep_alive(), if given, is called about every
    KEEP_ALIVE_SECONDS while the drain runs (the kick task keeps its debounce key set).
    """
    result = DrainResult()
    if not settings.KAFKA_BOOTSTRAP_SERVERS:
        return result
    deadline = time.monotonic() + max_seconds
    with publisher_lock(wait=wait_for_lock) as locked:
        result.locked = locked
        if not locked:
            return result
        idle_since = None
        alive_at = 0.0
        while True:
            if (
                keep_alive is not None
                and before_last_read is not None
                and time.monotonic() - alive_at >= KEEP_ALIVE_SECONDS
            ):
                keep_alive()
                alive_at = time.monotonic()
            rows = next_batch(settings.OUTBOX_BATCH_SIZE)
            if not rows:
                now = time.monotonic()
                idle_since = idle_since or now
                if now - idle_since < idle_seconds and now < deadline:
                    time.sleep(IDLE_POLL_SECONDS)
                    continue
                if before_last_read is None:
                    break
                before_last_read()
                before_last_read = None
                idle_seconds = 0.0
                result.last_read = True
                continue
            idle_since = None
            if time.monotonic() >= deadline:
                result.more = True
                break
            published, failed, error = publish_batch(rows)
            result.batches += 1
            result.published += published
            result.failed += failed
            if error:
                result.errors.append(error)
                break  # the failed rooms wait for their retry; the sweep tries the rest
            if len(rows) < settings.OUTBOX_BATCH_SIZE and settings.OUTBOX_LINGER_SECONDS > 0:
                # The batch emptied the outbox: let the next one gather. Every batch costs a
                # read, a flush and an UPDATE whatever its size, so fuller batches cost the
                # worker, the broker and the database less per event (Kafka lag grows by at
                # most the linger).
                time.sleep(
                    min(settings.OUTBOX_LINGER_SECONDS, max(0.0, deadline - time.monotonic()))
                )
    return result


# Bytes of a record beyond its key, value and headers (length, attributes, timestamp and offset
# deltas, the varint lengths: about 20 in Kafka's v2 format), and of a batch beyond its records
# (its header is 61): generous, so a flush's rows of a partition always fit in one batch.
RECORD_OVERHEAD = 40
BATCH_OVERHEAD = 128


class Record(NamedTuple):
    row: Row
    value: bytes
    key: bytes
    headers: list
    partition: int

    @property
    def size(self) -> int:
        return (
            len(self.value)
            + len(self.key)
            + RECORD_OVERHEAD
            + sum(len(name) + len(data) for name, data in self.headers)
        )


def flush_rows(records: list[Record], budget: int) -> list[Record]:
    """The records of one flush: per partition no more than one batch of `budget` bytes (a
    record larger than that alone), in the given order; a room stops at its first record that
    does not fit, and its later records wait for the next flush (rooms share partitions)."""
    used: dict[int, int] = {}
    stopped: set = set()
    chosen = []
    for record in records:
        room = record.row.room_id
        if room in stopped:
            continue
        size = record.size
        filled = used.get(record.partition, 0)
        if filled and filled + size > budget:
            stopped.add(room)
            continue
        used[record.partition] = filled + size if size <= budget else budget + 1
        chosen.append(record)
    return chosen


def records_for(rows: list[Row], partitions: list[int]) -> list[Record]:
    records = []
    for row in rows:
        key = kafka.record_key(row.room_id)
        records.append(
            Record(
                row,
                row.value.encode(),
                key,
                kafka.record_headers(row.type, row.pk),
                kafka.partition_for(key, partitions),
            )
        )
    return records


def publish_batch(rows: list[Row]) -> tuple[int, int, str]:
    """Send rows (as many as one batch per partition holds: flush_rows), wait for the acks,
    record the outcome. Returns (published, failed, error); rows left for the next flush are
    neither."""
    topic = settings.KAFKA_EVENTS_TOPIC
    started = time.perf_counter()
    futures: dict = {}
    error = ""
    try:
        producer = kafka.get_producer()
        partitions = sorted(producer.partitions_for(topic))
        budget = settings.KAFKA_BATCH_SIZE - BATCH_OVERHEAD
        chosen = flush_rows(records_for(rows, partitions), budget)
        rows = [record.row for record in chosen]
        for record in chosen:
            futures[record.row.pk] = producer.send(
                topic,
                value=record.value,
                key=record.key,
                headers=record.headers,
                partition=record.partition,
            )
        producer.flush(settings.OUTBOX_FLUSH_TIMEOUT_SECONDS)
    except Exception as exc:  # noqa: BLE001 - whatever failed, the rows stay in the outbox
        # Typically KafkaTimeoutError: broker gone, or the topic missing (a restarted in-memory
        # broker). Start over with a new producer, which ensures the topic first.
        error = f"{type(exc).__name__}: {exc}"
        kafka.reset_producer()

    acked, failed_heads = [], []
    blocked_rooms = set()
    for row in rows:
        if row.room_id in blocked_rooms:
            continue
        future = futures.get(row.pk)
        if future is not None and future.is_done and future.succeeded():
            acked.append(row)
            continue
        blocked_rooms.add(row.room_id)
        if future is not None and future.is_done and future.exception is not None:
            reason = f"{type(future.exception).__name__}: {future.exception}"
        else:
            reason = error or "not acknowledged"
        failed_heads.append((row, reason))
    if failed_heads and not error:
        # The broker rejected something (for instance it restarted and lost our producer id).
        error = failed_heads[0][1]
        kafka.reset_producer()

    now = timezone.now()
    if acked:
        mark_published(acked)
        Vacuum.count(len(acked))
        KAFKA_PUBLISH_LATENCY.observe(time.perf_counter() - started)
        counts: dict[str, int] = {}
        for row in acked:
            counts[row.type] = counts.get(row.type, 0) + 1
        for type_, n in counts.items():
            KAFKA_PUBLISHED.labels(type_).inc(n)
    for row, reason in failed_heads:
        attempts = row.publish_attempts + 1
        Outbox.objects.filter(pk=row.pk).update(
            publish_attempts=attempts,
            last_error=reason[:2000],
            next_attempt_at=now + timedelta(seconds=backoff_seconds(attempts)),
        )
    if failed_heads:
        KAFKA_PUBLISH_ERRORS.inc(len(failed_heads))
        logger.warning(
            "outbox: %d published, %d rooms held back (%s)", len(acked), len(failed_heads), error
        )
    return len(acked), len(rows) - len(acked), error
