"""Reading the events topic back in tests (no consumer group: every partition from offset 0)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from django.conf import settings


@dataclass
class Record:
    partition: int
    offset: int
    key: bytes
    headers: dict
    envelope: dict
    timestamp_ms: int = 0


def read_topic(bootstrap=None, *, want_ids=(), timeout: float = 30.0, settle: float = 0.0):
    """Every record of the events topic, until all want_ids are seen (then `settle` seconds)."""
    from kafka import KafkaConsumer, TopicPartition

    servers = bootstrap or settings.KAFKA_BOOTSTRAP_SERVERS
    consumer = KafkaConsumer(
        bootstrap_servers=servers,
        enable_auto_commit=False,
        allow_auto_create_topics=False,
        consumer_timeout_ms=500,
    )
    want = set(str(i) for i in want_ids)
    records: list[Record] = []
    try:
        deadline = time.monotonic() + timeout
        topic = settings.KAFKA_EVENTS_TOPIC
        partitions = None
        while partitions is None and time.monotonic() < deadline:
            partitions = consumer.partitions_for_topic(topic)
            if partitions is None:
                time.sleep(0.2)
        assert partitions, f"topic {topic} does not exist"
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        seen = set()
        settle_until = None
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=300)
            for tp, msgs in batch.items():
                for m in msgs:
                    envelope = json.loads(m.value)
                    records.append(
                        Record(
                            tp.partition,
                            m.offset,
                            m.key,
                            {k: v.decode() for k, v in m.headers},
                            envelope,
                            m.timestamp,
                        )
                    )
                    seen.add(envelope["id"])
            if want <= seen:
                if settle_until is None:
                    settle_until = time.monotonic() + settle
                if time.monotonic() >= settle_until:
                    break
    finally:
        consumer.close()
    return records


def outage_settings(broker):
    """Settings for a test that stops its private broker: short Kafka timeouts, no backoff."""
    from django.test import override_settings

    return override_settings(
        KAFKA_BOOTSTRAP_SERVERS=[broker.bootstrap],
        KAFKA_MAX_BLOCK_MS=1000,
        KAFKA_REQUEST_TIMEOUT_MS=1000,
        KAFKA_DELIVERY_TIMEOUT_MS=2000,
        OUTBOX_FLUSH_TIMEOUT_SECONDS=2.0,
        OUTBOX_RETRY_BASE_SECONDS=0.0,
    )


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1, message="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def assert_per_room_order(records, rows_by_id):
    """Per partition, each room's events appear in seq order (first occurrences)."""
    last = {}
    firsts = set()
    for rec in sorted(records, key=lambda r: (r.partition, r.offset)):
        eid = rec.envelope["id"]
        if eid not in rows_by_id or eid in firsts:
            continue
        firsts.add(eid)
        room, seq = rec.envelope["room"], rec.envelope["seq"]
        if seq is None:
            continue
        assert rec.partition == last.get(room, (rec.partition, 0))[0], (
            f"room {room} on two partitions"
        )
        assert seq > last.get(room, (rec.partition, 0))[1], (
            f"room {room}: seq {seq} after {last[room][1]}"
        )
        last[room] = (rec.partition, seq)


def kill_broker(broker) -> None:
    """SIGKILL the private broker (an abrupt outage; Broker.stop waits for a slow SIGTERM)."""
    if broker.proc is not None and broker.proc.poll() is None:
        broker.proc.kill()
        broker.proc.wait(10)
    broker.proc = None
