"""Kafka lag: how long after commit a `message.created` event is readable on the topic.

A separate process reads every partition of the events topic from its end (kafka-python),
and for each benchmark message (body `bench <step> <n> <t>`) records now - envelope `ts`
(`ts` is the commit time the server stamps, UTC wall clock: the same clock for every process
here). Driven through a pipe like the load-generator workers:
  ("report", step, expected, wait) -> {"count", "lag_ms": [...]}: waits up to `wait` s until
                                      `expected` distinct events of the step were read
  ("quit",)
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import time

BODY = re.compile(r"^bench (\d+) (\d+) ")


def watcher_main(conn, bootstrap: str, topic: str) -> None:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None, fetch_max_wait_ms=50
    )
    deadline = time.monotonic() + 30
    partitions = None
    while not partitions and time.monotonic() < deadline:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            time.sleep(0.2)
    if not partitions:
        conn.send({"exception": f"topic {topic} has no partitions"})
        return
    assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(assigned)
    consumer.seek_to_end(*assigned)
    for tp in assigned:  # resolve the end offsets now, before any benchmark message exists
        consumer.position(tp)
    seen: dict[int, dict[str, float]] = {}  # step -> {event id: lag ms}
    lock = threading.Lock()
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            batches = consumer.poll(timeout_ms=100)
            now = time.time()
            for records in batches.values():
                for record in records:
                    envelope = json.loads(record.value)
                    if envelope.get("type") != "message.created":
                        continue
                    match = BODY.match(envelope["data"].get("body", ""))
                    if not match:
                        continue
                    ts = dt.datetime.fromisoformat(envelope["ts"].replace("Z", "+00:00"))
                    with lock:
                        seen.setdefault(int(match[1]), {}).setdefault(
                            envelope["id"], (now - ts.timestamp()) * 1000
                        )

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    conn.send({"ready": True, "partitions": len(assigned)})
    while True:
        command = conn.recv()
        if command[0] == "quit":
            stop.set()
            thread.join(5)
            consumer.close()
            conn.send({"quit": True})
            return
        _, step, expected, wait = command
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with lock:
                if len(seen.get(step, {})) >= expected:
                    break
            time.sleep(0.1)
        with lock:
            lags = list(seen.get(step, {}).values())
        conn.send({"count": len(lags), "lag_ms": lags})


class KafkaLag:
    """The watcher process, started before the steps (it reads from the topic's end)."""

    def __init__(self, bootstrap: str, topic: str):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=watcher_main, args=(child, bootstrap, topic), daemon=True)
        self.proc.start()
        if not self.conn.poll(60):
            raise TimeoutError("Kafka watcher did not start")
        reply = self.conn.recv()
        if "exception" in reply:
            raise RuntimeError(reply["exception"])

    def report(self, step: int, expected: int, wait: float) -> dict:
        self.conn.send(("report", step, expected, wait))
        if not self.conn.poll(wait + 30):
            raise TimeoutError("Kafka watcher did not answer")
        return self.conn.recv()

    def close(self) -> None:
        if self.proc.is_alive():
            try:
                self.conn.send(("quit",))
                self.conn.poll(10)
            except (OSError, EOFError):
                pass
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
