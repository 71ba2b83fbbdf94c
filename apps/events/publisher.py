"""The Kafka bridge: publish committed outbox rows (Event) in per-room seq order.

Rules this module relies on:
- One publisher at a time. On PostgreSQL a session advisory lock is held around the whole drain
  loop; tasks that wait for it drain whatever is left when they get it. On SQLite (embedded
  mode) an flock on a file next to the database does the same between local processes.
- A room's rows are read in seq order. A row with seq N+1 is visible only after seq N committed
  (seq is allocated under the room row lock), so a room's pending rows are always a suffix of
  its log and are sent oldest first.
- A row is marked published only after the broker acknowledged it, and only up to a room's
  first failure: the rest of that room waits for the failed row's retry (exponential backoff,
  no deadline). Rows after a failure that did reach Kafka are sent again later with the same
  event id (at least once; consumers deduplicate on id).
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import NamedTuple

from django.conf import settings
from django.db import OperationalError, connection, transaction
from django.db.models import F
from django.utils import timezone

from .catalogue import CATALOGUE
from .fanout import serialize
from .models import Event
from .observability import KAFKA_PUBLISH_ERRORS, KAFKA_PUBLISH_LATENCY, KAFKA_PUBLISHED

logger = logging.getLogger(__name__)

KAFKA_TYPES = tuple(t for t, spec in CATALOGUE.items() if spec.kafka and spec.persisted)
# pg_advisory_lock key of the publisher ("chat-outbox" folded into a bigint). Advisory locks
# are per database, so test runs on their own databases never wait for each other.
PUBLISHER_LOCK_KEY = 0x63686174_6F757462
# A drain loop yields after this long so a sweep or kick can run on the same worker.
MAX_DRAIN_SECONDS = 30.0


@dataclass
class DrainResult:
    published: int = 0
    failed: int = 0
    batches: int = 0
    locked: bool = True
    more: bool = False  # stopped at max_seconds with rows left
    errors: list[str] = field(default_factory=list)


def backoff_seconds(attempts: int) -> float:
    """Exponential: base * 2^(attempts-1), capped at OUTBOX_RETRY_MAX_SECONDS."""
    base = settings.OUTBOX_RETRY_BASE_SECONDS
    return min(settings.OUTBOX_RETRY_MAX_SECONDS, base * (2 ** max(0, attempts - 1)))


def pending_rows():
    """Unpublished rows that go to Kafka."""
    return Event.objects.unpublished().filter(type__in=KAFKA_TYPES)


class Row(NamedTuple):
    pk: object
    room_id: int | None
    type: str
    envelope: dict
    publish_attempts: int


def next_batch(limit: int) -> list[Row]:
    """The next rows to send, oldest first per room, skipping rooms whose head is backing off."""
    now = timezone.now()
    pending = pending_rows()
    blocked = set(
        pending.filter(next_attempt_at__gt=now).values_list("room_id", flat=True).distinct()
    )
    rows = pending
    if blocked:
        rows = rows.exclude(room_id__in=[r for r in blocked if r is not None])
        if None in blocked:
            rows = rows.exclude(room__isnull=True)
    # Tuples, not model instances: this runs for every event at the full send rate.
    return [
        Row(*values)
        for values in rows.order_by("room_id", F("seq").asc(nulls_last=True), "ts", "id")
        .values_list("id", "room_id", "type", "envelope", "publish_attempts")[:limit]
    ]


@contextmanager
def publisher_lock():
    """Yield True while this process is the only publisher (False: another one held it too long)."""
    if connection.vendor != "postgresql":
        with file_lock() as locked:
            yield locked
        return
    timeout_ms = int(settings.OUTBOX_LOCK_TIMEOUT_SECONDS * 1000)
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            # Session-level lock taken inside a transaction: the bounded lock_timeout is local
            # to it, the lock outlives it (and dies with the session if the worker is killed).
            cursor.execute("SELECT set_config('lock_timeout', %s, true)", [f"{timeout_ms}ms"])
            cursor.execute("SELECT pg_advisory_lock(%s)", [PUBLISHER_LOCK_KEY])
    except OperationalError:
        logger.info("outbox publisher lock busy for %sms; leaving the rows to its holder", timeout_ms)
        yield False
        return
    try:
        yield True
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [PUBLISHER_LOCK_KEY])


@contextmanager
def file_lock():
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
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.05)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def publish_pending(*, max_seconds: float = MAX_DRAIN_SECONDS) -> DrainResult:
    """Publish every pending outbox row (until empty, a failure, or max_seconds)."""
    result = DrainResult()
    if not settings.KAFKA_BOOTSTRAP_SERVERS:
        return result
    deadline = time.monotonic() + max_seconds
    with publisher_lock() as locked:
        result.locked = locked
        if not locked:
            return result
        while True:
            rows = next_batch(settings.OUTBOX_BATCH_SIZE)
            if not rows:
                break
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
    return result


def publish_batch(rows: list[Row]) -> tuple[int, int, str]:
    """Send rows, wait for the acks, record the outcome. Returns (published, failed, error)."""
    from . import kafka

    topic = settings.KAFKA_EVENTS_TOPIC
    started = time.perf_counter()
    futures: dict = {}
    error = ""
    try:
        producer = kafka.get_producer()
        for row in rows:
            envelope = row.envelope
            futures[row.pk] = producer.send(
                topic,
                value=serialize(envelope).encode(),
                key=kafka.message_key(envelope),
                headers=kafka.message_headers(envelope),
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
        Event.objects.filter(pk__in=[row.pk for row in acked]).update(
            published_at=now,
            publish_attempts=F("publish_attempts") + 1,
            last_error="",
            next_attempt_at=None,
        )
        KAFKA_PUBLISH_LATENCY.observe(time.perf_counter() - started)
        counts: dict[str, int] = {}
        for row in acked:
            counts[row.type] = counts.get(row.type, 0) + 1
        for type_, n in counts.items():
            KAFKA_PUBLISHED.labels(type_).inc(n)
    for row, reason in failed_heads:
        attempts = row.publish_attempts + 1
        Event.objects.filter(pk=row.pk).update(
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

