"""Outbox publisher benchmark: how fast the Celery worker drains the outbox to Kafka, and at
what CPU cost per event, apart from the WebSocket server.

    .venv/bin/python -m bench.outbox --backlog 20000          # drain a backlog
    .venv/bin/python -m bench.outbox --rates 250,500,1000 --batch 20   # steady writes, lag

The stack is bench/stack.py's (its own PostgreSQL database, a private Tansu broker and the
topic, a Celery worker with beat on its own queue, `-c 2 -B` as bin/run runs it); the server
process it starts stays idle. Events are real: the send service in `--rooms` rooms (one
member each), called by `--fillers` processes on this machine, `--batch` sends per
transaction (message_send_many, the server's group commit), so every row is written, kicked
and published exactly as in production.

--backlog N: the worker is stopped while N messages are committed (their kicks are held back
by the kick key, as if the one queued kick were lost), then started; once it is ready the
publisher is kicked and the bench waits until the outbox is empty. Prints events/s drained
and the worker's CPU (all its processes) per event.

--rates R,...: the worker runs; each step commits R messages/s for --duration s, then waits
for the outbox to empty. Prints the committed rate, events/s published, worker CPU per event
and % of a core, and the Kafka lag p50/p99 (commit `ts` to readable on the topic, measured
by bench/kafkalag.py for every message of the step). A step holds when every message reached
Kafka with lag p99 <= 1 s and the fillers kept the rate.

--profile: py-spy (bench/profile.py) on every worker process during the drain (backlog) or
the step at the first rate; collapsed stacks in bench/profiles/outbox-*.txt.

One script of ~400 lines: both modes share the stack, the fillers and the lag reader.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
import uuid

from bench import stats
from bench.stack import (
    ROOT,
    ChatStack,
    machine,
    make_rooms,
    make_users,
    stop_cleanly_on_sigterm,
    tree_cpu_seconds,
    tree_pids,
)

KAFKA_P99_BOUND_MS = 1000.0


# --- Filler processes ---------------------------------------------------------------------------


def filler_main(conn, pairs: list[tuple[int, int]], batch: int) -> None:
    """Commit messages through the send service into (room id, author id) pairs, round-robin,
    `batch` sends per transaction (message_send_many, as the server's group commit does).

    Commands: ("run", step, rate, duration, first_n, stride) -> {"sent", "errors", "cpu",
    "behind", "seconds"}: open loop at `rate` msg/s, numbered first_n, first_n + stride, ...;
    ("quit",)."""
    import os
    import resource

    import django

    django.setup()
    from django.contrib.auth import get_user_model

    from apps.messaging.services import SendRequest, message_send_many

    def send_many(requests) -> int:
        """Commit the requests in one transaction; how many were refused."""
        results = message_send_many([SendRequest(*request) for request in requests])
        return sum(isinstance(result, Exception) for result in results)

    users = get_user_model().objects.in_bulk({author for _, author in pairs})
    targets = [(room, users[author]) for room, author in pairs]
    conn.send({"ready": os.getpid()})
    while True:
        command = conn.recv()
        if command[0] == "quit":
            return
        _, step, rate, duration, n, stride = command
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        sent = errors = 0
        behind = 0.0
        start = time.monotonic()
        count = int(rate * duration)
        for first in range(0, count, batch):
            due = start + first / rate
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            else:
                behind = max(behind, now - due)
            requests = []
            for i in range(first, min(count, first + batch)):
                room, author = targets[i % len(targets)]
                requests.append(
                    (room, author, f"bench {step} {n} {time.monotonic_ns()}", uuid.uuid4())
                )
                n += stride
            try:
                failed = send_many(requests)
            except Exception:  # noqa: BLE001 - counted; the step then misses
                failed = len(requests)
            errors += failed
            sent += len(requests) - failed
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (usage.ru_utime - usage0.ru_utime) + (usage.ru_stime - usage0.ru_stime)
        conn.send(
            {
                "sent": sent,
                "errors": errors,
                "cpu": cpu,
                "behind": behind,
                "seconds": time.monotonic() - start,
            }
        )


class Fillers:
    """--fillers spawned processes (Django set up on the bench database), driven by pipes."""

    def __init__(self, pairs: list[tuple[int, int]], count: int, batch: int = 1):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.conns, self.procs = [], []
        for index in range(count):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=filler_main, args=(child, pairs[index::count], batch), daemon=True
            )
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)
        for conn in self.conns:
            if not conn.poll(120):
                raise TimeoutError("filler did not start")
            conn.recv()

    def run(self, step: int, rate: float, duration: float) -> dict:
        """Commit `rate` msg/s for `duration` s across the fillers; their summed reports."""
        count = len(self.conns)
        for index, conn in enumerate(self.conns):
            conn.send(("run", step, rate / count, duration, index, count))
        replies = []
        for conn in self.conns:
            if not conn.poll(duration * 20 + 600):
                raise TimeoutError("filler did not finish")
            replies.append(conn.recv())
        return {
            "sent": sum(r["sent"] for r in replies),
            "errors": sum(r["errors"] for r in replies),
            "cpu": sum(r["cpu"] for r in replies),
            "behind_s": max(r["behind"] for r in replies),
            "seconds": max(r["seconds"] for r in replies),
        }

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(("quit",))
            except (OSError, EOFError):
                pass
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()


# --- Measuring ----------------------------------------------------------------------------------


def outbox_counts() -> tuple[int, int]:
    """(pending, published) Kafka-bound rows, read the way the publisher reads them."""
    from django.db import connection
    from django.db.models import Count, Q

    from apps.events.models import Event
    from apps.events.publisher import KAFKA_TYPES

    try:
        counts = Event.objects.filter(type__in=KAFKA_TYPES).aggregate(
            pending=Count("id", filter=Q(outbox__isnull=False)),
            published=Count("id", filter=Q(outbox__isnull=True)),
        )
    finally:
        connection.close()
    return counts["pending"], counts["published"]


def wait_drained(timeout: float, interval: float = 0.1) -> float | None:
    """Seconds until the outbox is empty (None: still pending after `timeout`)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if outbox_counts()[0] == 0:
            return time.monotonic() - start
        time.sleep(interval)
    return None


class WorkerProfile:
    """py-spy on every process of the worker (pool children and beat) for `seconds`."""

    def __init__(self, worker_pid: int, seconds: float, name: str, wall: bool = False):
        from bench.profile import Profiler

        self.path = ROOT / "bench" / "profiles" / f"{name}.txt"
        self.parts = [
            Profiler(pid, seconds, self.path.with_suffix(f".{pid}.txt"), wall=wall)
            for pid in tree_pids(worker_pid)
        ]

    def finish(self, count: int = 15) -> str:
        from bench.profile import by_app, top

        with open(self.path, "w") as merged:
            for part in self.parts:
                if part.wait(60) is not None:
                    merged.write(part.path.read_text())
                    part.path.unlink()
        return top(self.path, count) + "\n\n" + by_app(self.path, count, within="publish_pending")


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of every core so far (/proc/stat): the whole machine's CPU,
    PostgreSQL, Redis and the broker included."""
    with open("/proc/stat") as handle:
        fields = [int(x) for x in handle.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_pct(before: tuple[int, int], after: tuple[int, int]) -> int:
    """% of one core (200% = both cores busy) between two machine_busy() readings."""
    total = after[1] - before[1]
    return round(100 * os.cpu_count() * (after[0] - before[0]) / total) if total else 0


def tasks_received(worker) -> int:
    """Publisher tasks the worker has received so far (its INFO log has a line for each)."""
    return worker.output().count("] received")


def start_worker(stack):
    """The Celery worker as ChatStack starts it (-c 2 -B on the bench queue), stopped with it."""
    from tests.support.processes import CeleryWorker

    stack.worker = CeleryWorker(stack.env, beat=True, concurrency=2).start()
    stack.worker.wait_ready(60)
    return stack.worker


def hold_kicks(seconds: float) -> None:
    """Set the kick key: commits enqueue no publisher task until it expires or is cleared."""
    from django.conf import settings

    from apps.core.redis import sync_client
    from apps.events.outbox import kick_key

    sync_client().set(kick_key(), 1, px=int(seconds * 1000))
    assert settings.KAFKA_BOOTSTRAP_SERVERS


def run_backlog(stack, fillers, args) -> dict:
    from apps.events.outbox import clear_kick
    from apps.events.tasks import kick_publisher

    hold_kicks(3600)
    fill = fillers.run(0, args.fill_rate, args.backlog / args.fill_rate)
    pending, _ = outbox_counts()
    print(
        f"backlog: {fill['sent']} messages committed in {fill['seconds']:.1f}s "
        f"({fill['errors']} errors); {pending} Kafka-bound rows pending",
        flush=True,
    )
    worker = start_worker(stack)
    profile = None
    if args.profile:
        profile = WorkerProfile(worker.proc.pid, args.profile_seconds, "outbox-backlog", args.wall)
    cpu0, t0, tasks0 = tree_cpu_seconds(worker.proc.pid), time.monotonic(), tasks_received(worker)
    busy0 = machine_busy()
    clear_kick()
    kick_publisher()
    seconds = wait_drained(args.timeout)
    cpu = tree_cpu_seconds(worker.proc.pid) - cpu0
    wall = time.monotonic() - t0
    result = {
        "mode": "backlog",
        "events": pending,
        "drained": seconds is not None,
        "seconds": round(wall, 2),
        "events_per_s": round(pending / wall) if seconds is not None else None,
        "worker_cpu_s": round(cpu, 2),
        "worker_cpu_ms_per_event": round(1000 * cpu / pending, 3) if pending else None,
        "worker_cpu_pct": round(100 * cpu / wall),
        "tasks": tasks_received(worker) - tasks0,
        "machine_cpu_pct": busy_pct(busy0, machine_busy()),
    }
    print(
        f"drained {pending} events in {wall:.2f}s = {result['events_per_s']}/s; worker CPU "
        f"{cpu:.2f}s = {result['worker_cpu_ms_per_event']} ms/event "
        f"({result['worker_cpu_pct']}% of a core); {result['tasks']} tasks; machine "
        f"{result['machine_cpu_pct']}% (of 200)"
        + ("" if seconds is not None else f"  NOT DRAINED after {args.timeout:g}s"),
        flush=True,
    )
    if profile:
        print(profile.finish())
        result["profile"] = str(profile.path.relative_to(ROOT))
    return result


def run_rates(stack, fillers, args, rates) -> list[dict]:
    from bench.kafkalag import KafkaLag

    worker = start_worker(stack)
    watcher = KafkaLag(stack.env["KAFKA_BOOTSTRAP_SERVERS"], stack.topic)
    steps = []
    try:
        fillers.run(0, min(rates[0], 50.0), 2)  # warm-up (connections, producer), not reported
        wait_drained(30)
        for index, rate in enumerate(rates, start=1):
            profile = None
            if args.profile and index == 1:
                profile = WorkerProfile(
                    worker.proc.pid, args.duration, f"outbox-{rate:g}", args.wall
                )
            _, published0 = outbox_counts()
            cpu0, t0 = tree_cpu_seconds(worker.proc.pid), time.monotonic()
            tasks0, busy0 = tasks_received(worker), machine_busy()
            fill = fillers.run(index, rate, args.duration)
            drain = wait_drained(args.timeout)
            wall = time.monotonic() - t0
            cpu = tree_cpu_seconds(worker.proc.pid) - cpu0
            _, published1 = outbox_counts()
            published = published1 - published0
            kafka = watcher.report(index, fill["sent"], args.kafka_wait)
            lag = stats.latency_summary(int(ms * 1e6) for ms in kafka["lag_ms"])
            step = {
                "rate": rate,
                "committed": fill["sent"],
                "errors": fill["errors"],
                "committed_per_s": round(fill["sent"] / fill["seconds"]),
                "filler_behind_s": round(fill["behind_s"], 3),
                "filler_cpu_pct": round(100 * fill["cpu"] / fill["seconds"]),
                "published": published,
                "published_per_s": round(published / wall),
                "drained_after_s": None if drain is None else round(drain, 2),
                "worker_cpu_ms_per_event": round(1000 * cpu / published, 3) if published else None,
                "worker_cpu_pct": round(100 * cpu / wall),
                "tasks": tasks_received(worker) - tasks0,
                "machine_cpu_pct": busy_pct(busy0, machine_busy()),
                "kafka_count": kafka["count"],
                "kafka_lag": lag,
            }
            held = (
                drain is not None
                and not fill["errors"]
                and kafka["count"] >= fill["sent"]
                and lag["p99_ms"] is not None
                and lag["p99_ms"] <= KAFKA_P99_BOUND_MS
                and fill["behind_s"] < 1.0
            )
            step["held"] = held
            print(
                f"{rate:>6g}/s  committed {fill['sent']:>6} = {step['committed_per_s']:>5}/s "
                f"(behind {step['filler_behind_s']}s, fillers {step['filler_cpu_pct']}%)  "
                f"published {published} = {step['published_per_s']}/s  worker "
                f"{step['worker_cpu_ms_per_event']} ms/event {step['worker_cpu_pct']}% "
                f"{step['tasks']} tasks  machine {step['machine_cpu_pct']}%  "
                f"kafka {kafka['count']}/{fill['sent']} p50 {lag['p50_ms']} "
                f"p99 {lag['p99_ms']} ms  {'ok' if held else 'MISS'}",
                flush=True,
            )
            if profile:
                print(profile.finish())
                step["profile"] = str(profile.path.relative_to(ROOT))
            steps.append(step)
            if not held and not args.full:
                break
    finally:
        watcher.close()
    return steps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--backlog", type=int, metavar="N", help="drain N committed messages")
    mode.add_argument("--rates", help="comma-separated commit rates (msg/s) for steady steps")
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--fillers", type=int, default=2, help="committing processes")
    parser.add_argument(
        "--batch",
        type=int,
        default=1,
        help="sends per transaction (the server's group commit under load)",
    )
    parser.add_argument(
        "--fill-rate",
        type=float,
        default=2000.0,
        help="backlog: commit rate while filling (the worker is stopped)",
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per step")
    parser.add_argument("--timeout", type=float, default=120.0, help="max wait for the drain")
    parser.add_argument("--kafka-wait", type=float, default=15.0)
    parser.add_argument("--full", action="store_true", help="do not stop at the first miss")
    parser.add_argument("--profile", action="store_true", help="py-spy the worker (see above)")
    parser.add_argument(
        "--wall",
        action="store_true",
        help="profile every thread, waiting included (default: GIL holder)",
    )
    parser.add_argument(
        "--profile-seconds", type=float, default=10.0, help="backlog: how long to profile the drain"
    )
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the stack (an experiment; printed)",
    )
    args = parser.parse_args(argv)
    stop_cleanly_on_sigterm()
    started = time.monotonic()
    print(
        f"outbox: {args.rooms} rooms, {args.fillers} fillers, "
        + (
            f"backlog {args.backlog}"
            if args.backlog
            else f"rates {args.rates}, {args.duration:g}s steps"
        )
        + f"  ({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {machine()})",
        flush=True,
    )
    fillers = None
    with ChatStack(settings=dict(kv.split("=", 1) for kv in args.set), worker=False) as stack:
        try:
            users = make_users(args.rooms, f"{stack.tag}o")
            rooms = make_rooms([(uid, [uid], f"outbox {i}") for i, (uid, _) in enumerate(users)])
            pairs = [(room, uid) for room, (uid, _) in zip(rooms, users, strict=False)]
            fillers = Fillers(pairs, args.fillers, args.batch)
            # The seeding events (room.created, member.joined) are not part of the measure.
            from apps.events.models import Event

            Event.objects.mark_published()
            print(f"seeded {len(rooms)} rooms in {time.monotonic() - started:.0f}s", flush=True)
            if args.backlog:
                results = [run_backlog(stack, fillers, args)]
            else:
                results = run_rates(stack, fillers, args, [float(r) for r in args.rates.split(",")])
        finally:
            if fillers:
                fillers.close()
    print(f"(total {time.monotonic() - started:.0f}s)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"results": results}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
