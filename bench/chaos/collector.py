"""Reads the events topic continuously into memory, across broker restarts.

The private broker keeps its data in memory, so a restarted broker is empty. The collector
therefore reads in generations: one per broker life, each from offset 0 of every partition.
Everything it ever read is kept (with its generation, partition and offset), so the checks can
count events, duplicates and order over the whole run.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Record:
    generation: int
    partition: int
    offset: int
    key: str
    event_id: str
    room: int | None
    seq: int | None
    type: str
    header_id: str | None


class Collector:
    def __init__(self, bootstrap: str, topic: str):
        self.bootstrap, self.topic = bootstrap, topic
        self.records: list[Record] = []
        self.ids: set[str] = set()
        self.generation = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start a new generation: read the (re)started broker's topic from the beginning."""
        self.generation += 1
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(self.generation,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(15)
        self._thread = None

    def seen(self) -> set[str]:
        with self._lock:
            return set(self.ids)

    def wait_for(self, ids, timeout: float) -> set[str]:
        """Wait until every id in `ids` was read; return those still missing."""
        deadline = time.monotonic() + timeout
        while True:
            missing = set(ids) - self.seen()
            if not missing or time.monotonic() > deadline:
                return missing
            time.sleep(0.2)

    def _run(self, generation: int) -> None:
        from kafka import KafkaConsumer, TopicPartition

        consumer = None
        try:
            while not self._stop.is_set() and consumer is None:
                try:
                    consumer = KafkaConsumer(
                        bootstrap_servers=self.bootstrap,
                        enable_auto_commit=False,
                        allow_auto_create_topics=False,
                        request_timeout_ms=10000,
                    )
                except Exception as exc:  # broker not up yet
                    self.errors.append(f"gen {generation}: connect: {exc}")
                    time.sleep(0.5)
            partitions = None
            while not self._stop.is_set() and not partitions:
                partitions = consumer.partitions_for_topic(self.topic)
                if not partitions:
                    time.sleep(0.2)
            if self._stop.is_set():
                return
            tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            while not self._stop.is_set():
                batch = consumer.poll(timeout_ms=200)
                with self._lock:
                    for tp, messages in batch.items():
                        for m in messages:
                            self._add(generation, tp.partition, m)
        finally:
            if consumer is not None:
                consumer.close()

    def _add(self, generation, partition, m) -> None:
        envelope = json.loads(m.value)
        headers = {k: v.decode() for k, v in (m.headers or [])}
        self.records.append(
            Record(
                generation=generation,
                partition=partition,
                offset=m.offset,
                key=(m.key or b"").decode(),
                event_id=envelope["id"],
                room=envelope.get("room"),
                seq=envelope.get("seq"),
                type=envelope["type"],
                header_id=headers.get("event_id"),
            )
        )
        self.ids.add(envelope["id"])
