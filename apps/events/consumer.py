"""The Kafka consumer-group runner behind `python manage.py consume_events --group NAME`.

- Offsets are committed only for events whose handler finished (or that were duplicates), after
  each polled batch, and again when partitions are revoked in a rebalance.
- A handler that raises is retried with backoff from the same offset: the partition is paused
  there rather than skip the event (other partitions go on).
- SIGTERM/SIGINT: the current batch finishes, offsets are committed and the consumer leaves the
  group (close()), so the others take over its partitions at once.
"""

from __future__ import annotations

import json
import logging
import signal
import time

from django.conf import settings
from django.db import close_old_connections

from . import handlers
from .kafka import consumer_config, ensure_topics
from .observability import CONSUMER_HANDLED, CONSUMER_LAG

logger = logging.getLogger(__name__)

POLL_TIMEOUT_MS = 1000
RETRY_MIN_SECONDS = 0.5
RETRY_MAX_SECONDS = 30.0


class GroupConsumer:
    def __init__(self, group: str, handler: handlers.Handler, *, stdout=None):
        self.group = group
        self.handler = handler
        self.stdout = stdout
        self.stopping = False
        self.consumer = None
        # Next offset to commit per partition: everything before it was handled.
        self.done: dict = {}
        self.failures: dict = {}
        self.retry_at: dict = {}
        self.counts = {handlers.HANDLED: 0, handlers.DUPLICATE: 0, handlers.IGNORED: 0}

    def say(self, text: str) -> None:
        logger.info("consume_events[%s]: %s", self.group, text)
        if self.stdout is not None:
            self.stdout.write(text)
            self.stdout.flush()

    def stop(self, *args) -> None:
        self.stopping = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def commit(self, partitions=None) -> None:
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata

        offsets = {
            tp: OffsetAndMetadata(offset, "", -1)
            for tp, offset in self.done.items()
            if partitions is None or tp in partitions
        }
        if not offsets:
            return
        try:
            self.consumer.commit(offsets)
        except KafkaError as exc:
            # A rebalance took the partition away: its new owner starts at the last commit and
            # deduplicates what we handled since.
            logger.warning("offset commit failed (%s); the next owner deduplicates", exc)
        for tp in offsets:
            self.done.pop(tp, None)

    def run(self) -> None:
        from kafka import ConsumerRebalanceListener, KafkaConsumer

        runner = self

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                runner.commit(set(revoked))
                if revoked:
                    runner.say(f"revoked partitions {sorted(tp.partition for tp in revoked)}")

            def on_partitions_assigned(self, assigned):
                runner.say(f"assigned partitions {sorted(tp.partition for tp in assigned)}")

        ensure_topics(wait_seconds=30)
        self.consumer = KafkaConsumer(**consumer_config(self.group))
        self.consumer.subscribe([settings.KAFKA_EVENTS_TOPIC], listener=Listener())
        self.say(f"joined group {self.consumer.config['group_id']}")
        try:
            while not self.stopping:
                self.resume_due()
                batch = self.consumer.poll(timeout_ms=POLL_TIMEOUT_MS)
                # The whole batch is handled even if SIGTERM arrives meanwhile.
                for tp, records in batch.items():
                    self.handle_partition(tp, records)
                self.commit()
                self.report_lag()
                close_old_connections()
        finally:
            self.commit()
            self.consumer.close()  # leaves the group: its partitions move on without a timeout
            self.say(
                "left the group (handled {handled}, duplicates {duplicate}, ignored {ignored})".format(
                    **self.counts
                )
            )

    def handle_partition(self, tp, records) -> None:
        for record in records:
            result = self.handle_record(record)
            if result is None:
                # Retry this record later: rewind the partition to it and pause it until its
                # backoff is over (the other partitions go on).
                self.consumer.seek(tp, record.offset)
                self.consumer.pause(tp)
                return
            self.done[tp] = record.offset + 1
            self.failures.pop(tp, None)

    def resume_due(self) -> None:
        paused = self.consumer.paused()
        if not paused:
            return
        now = time.monotonic()
        due = [tp for tp in paused if self.retry_at.get((tp.topic, tp.partition), 0) <= now]
        if due:
            self.consumer.resume(*due)

    def handle_record(self, record) -> str | None:
        tp_key = (record.topic, record.partition)
        try:
            envelope = json.loads(record.value)
            if not isinstance(envelope, dict) or "id" not in envelope or "type" not in envelope:
                raise ValueError("not an event envelope")
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            # Never valid, never will be: skipping it is the only way forward.
            logger.error("skipping unreadable record %s@%s: %s", tp_key, record.offset, exc)
            CONSUMER_HANDLED.labels(self.group, "invalid").inc()
            return "invalid"
        try:
            result = handlers.process(self.group, self.handler, envelope)
        except Exception:  # noqa: BLE001 - any handler error: retry from this offset
            failures = self.failures.get(tp_key, 0) + 1
            self.failures[tp_key] = failures
            delay = min(RETRY_MAX_SECONDS, RETRY_MIN_SECONDS * 2 ** (failures - 1))
            self.retry_at[tp_key] = time.monotonic() + delay
            logger.exception(
                "handler failed on event %s (attempt %d); retrying in %.1fs",
                envelope.get("id"),
                failures,
                delay,
            )
            CONSUMER_HANDLED.labels(self.group, "error").inc()
            close_old_connections()
            return None
        self.failures.pop(tp_key, None)
        self.retry_at.pop(tp_key, None)
        self.counts[result] += 1
        CONSUMER_HANDLED.labels(self.group, result).inc()
        return result

    def report_lag(self) -> None:
        for tp in self.consumer.assignment():
            end = self.consumer.highwater(tp)
            if end is None:
                continue
            try:
                position = self.consumer.position(tp, timeout_ms=100)
            except Exception:  # noqa: BLE001 - lag is best effort
                continue
            if position is not None:
                CONSUMER_LAG.labels(self.group, str(tp.partition)).set(max(0, end - position))
