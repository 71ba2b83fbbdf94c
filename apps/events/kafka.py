"""Kafka plumbing shared by the publisher, the consumers and the topic command.

One producer per process: created lazily (or by the Celery worker_process_init signal) in the
process that uses it, never inherited across a fork, flushed and closed on shutdown.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from django.conf import settings

logger = logging.getLogger(__name__)

# Key of events that belong to no room (none of today's durable types; kept for the contract):
# one fixed key keeps them on one partition, in commit order, apart from every room's key.
ROOMLESS_KEY = b"global"

_producer = None
_producer_pid = None
_producer_lock = threading.Lock()


def client_config() -> dict:
    return {
        "bootstrap_servers": settings.KAFKA_BOOTSTRAP_SERVERS,
        "security_protocol": settings.KAFKA_SECURITY_PROTOCOL,
        "request_timeout_ms": settings.KAFKA_REQUEST_TIMEOUT_MS,
        # A missing broker fails fast (the outbox keeps the rows) instead of the 30 s default.
        "bootstrap_timeout_ms": settings.KAFKA_MAX_BLOCK_MS,
    }


# The publisher adds a flush's records and then flushes (apps.events.publisher): no batch may
# leave while records are still being added, or one partition's records of a flush could travel
# in two requests, the first failing and the second not (a room's later event on Kafka before
# its earlier one). flush() sends every batch at once, so linger only has to outlast the loop.
PUBLISHER_LINGER_MS = 30_000


def producer_config() -> dict:
    return {
        **client_config(),
        "client_id": f"chat-publisher-{os.getpid()}",
        "enable_idempotence": True,
        "acks": "all",
        "linger_ms": PUBLISHER_LINGER_MS,
        # Small JSON records: compressing them would cost the publisher CPU for little gain.
        "compression_type": None,
        # kafka-python's own metrics are read by nobody here (chat_kafka_* in Prometheus
        # are ours) and cost a few percent of the publisher's CPU per record.
        "metrics_enabled": False,
        "batch_size": settings.KAFKA_BATCH_SIZE,
        "max_block_ms": settings.KAFKA_MAX_BLOCK_MS,
        "delivery_timeout_ms": max(
            settings.KAFKA_DELIVERY_TIMEOUT_MS,
            settings.KAFKA_REQUEST_TIMEOUT_MS + PUBLISHER_LINGER_MS,
        ),
        # Topics are created with the configured partition count (ensure_topics), never by a
        # metadata request with the broker's default count.
        "allow_auto_create_topics": False,
    }


def consumer_config(group: str) -> dict:
    return {
        **client_config(),
        "group_id": group_id(group),
        "client_id": f"chat-consumer-{group}-{os.getpid()}",
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "allow_auto_create_topics": False,
        "session_timeout_ms": settings.KAFKA_CONSUMER_SESSION_TIMEOUT_MS,
        "heartbeat_interval_ms": settings.KAFKA_CONSUMER_HEARTBEAT_MS,
        "max_poll_interval_ms": settings.KAFKA_CONSUMER_MAX_POLL_INTERVAL_MS,
        "max_poll_records": settings.KAFKA_CONSUMER_MAX_POLL_RECORDS,
    }


def group_id(group: str) -> str:
    """Kafka group id of `consume_events --group NAME`: scoped by KAFKA_TOPIC_PREFIX."""
    return f"{settings.KAFKA_TOPIC_PREFIX}.{group}"


def record_key(room_id: int | None) -> bytes:
    """The room id as UTF-8 decimal (PROTOCOL §5), or ROOMLESS_KEY."""
    return ROOMLESS_KEY if room_id is None else str(room_id).encode()


def record_headers(event_type: str, event_id: str) -> list[tuple[str, bytes]]:
    return [("event_type", event_type.encode()), ("event_id", event_id.encode())]


def partition_for(key: bytes, partitions: list[int]) -> int:
    """The partition of a key among the topic's sorted partitions: kafka-python's (and Java's)
    default partitioner, murmur2, so the publisher can count bytes per partition before it
    sends and a room keeps the partition it always had."""
    from kafka.partitioner.default import murmur2

    return partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]


def ensure_topics(*, wait_seconds: float = 0.0) -> list[str]:
    """Create the events topic with the configured partitions if it does not exist."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaConnectionError, KafkaTimeoutError, TopicAlreadyExistsError

    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            admin = KafkaAdminClient(client_id="chat-admin", **client_config())
            break
        except (KafkaTimeoutError, KafkaConnectionError):
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)
    created = []
    try:
        existing = set(admin.list_topics())
        topic = settings.KAFKA_EVENTS_TOPIC
        if topic not in existing:
            try:
                admin.create_topics(
                    [NewTopic(topic, settings.KAFKA_PARTITIONS, settings.KAFKA_REPLICATION_FACTOR)]
                )
                created.append(topic)
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()
    if created:
        logger.info("created Kafka topic %s (%d partitions)", topic, settings.KAFKA_PARTITIONS)
    return created


def get_producer():
    """This process's producer, created (after ensuring the topic) on first use."""
    global _producer, _producer_pid
    with _producer_lock:
        if _producer is not None and _producer_pid == os.getpid():
            return _producer
        # Inherited across a fork: its sockets and sender thread belong to the parent.
        _producer = None
        from kafka import KafkaProducer

        ensure_topics()
        _producer = KafkaProducer(**producer_config())
        _producer_pid = os.getpid()
        logger.info("Kafka producer started in process %s", _producer_pid)
        return _producer


def _take_producer():
    """Detach this process's producer (None if there is none or it was inherited)."""
    global _producer, _producer_pid
    with _producer_lock:
        producer, _producer = _producer, None
        owned = _producer_pid == os.getpid()
        _producer_pid = None
    return producer if owned else None


def reset_producer() -> None:
    """Drop the producer without waiting (after a failure, or a broker that lost our state).

    The next get_producer() makes a fresh one, with a new producer id, after ensuring the
    topic again: a restarted in-memory broker has neither.
    """
    producer = _take_producer()
    if producer is not None:
        _discard(producer)


def _discard(producer) -> None:
    try:
        producer.close(timeout=0)
    except Exception:  # noqa: BLE001 - closing a broken producer must not raise
        # kafka-python's close() stops at its flush() when records are still pending; the
        # sender thread must still go, or it keeps retrying records the outbox will resend.
        sender = getattr(producer, "_sender", None)
        if sender is not None:
            sender.force_close()


def close_producer(timeout: float = 10.0) -> None:
    """Flush what is buffered and close (worker shutdown)."""
    producer = _take_producer()
    if producer is not None:
        try:
            producer.flush(timeout)
        except Exception:  # noqa: BLE001 - unacked rows stay in the outbox
            logger.warning("Kafka producer flush at shutdown failed", exc_info=True)
        _discard(producer)
        logger.info("Kafka producer of process %s flushed and closed", os.getpid())
