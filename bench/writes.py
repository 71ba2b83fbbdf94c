"""Writes benchmark (with Kafka lag): 100 rooms of 5 members, every socket sending.

    .venv/bin/python -m bench.writes
    .venv/bin/python -m bench.writes --rates 250,500,1000 --duration 5

Every socket subscribes to its room and sends `message.send` at total rate / sockets. Per step:
acked sends per second, ack latency p50/p99 (send to `ack`), delivery latency p99 and lost
deliveries (each message reaches the 4 other members), and Kafka lag p50/p99 (commit `ts` to
readable on the topic, bench/kafkalag.py). A step holds when ack p99 <= 50 ms with nothing
refused, unacked or closed; the ladder stops at the first miss.

Before the ladder, the limits of the same run (bench/limits.py): `pgbench -N` at --pg-clients,
the send path's statements in a raw asyncio psycopg loop, and redis-benchmark PUBLISH; the held
rate is printed as a ratio to pgbench's tps (issue 18's target: >= 0.5x). Each step prints the
CPU per acked send of every process involved (server, worker, broker, PostgreSQL, Redis).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import sys
import time
from array import array

from bench import limits as bench_limits
from bench import pgstat, stats
from bench import stack as stack_module
from bench.kafkalag import KafkaLag
from bench.loadgen import Pool, ladder_arguments, split
from bench.stack import (
    ROOT,
    CeilingServer,
    ChatStack,
    machine,
    make_rooms,
    make_users,
    stop_cleanly_on_sigterm,
    tree_cpu_seconds,
)

ACK_P99_BOUND_MS = 50.0
KAFKA_P99_BOUND_MS = 1000.0


def run_step(pool, shares, stack, watcher, step, rate, args) -> dict:
    server_pid = stack.pid
    worker = getattr(stack, "worker", None)  # the ceiling has no Celery worker

    def worker_cpu():
        return tree_cpu_seconds(worker.proc.pid) if worker else 0.0

    broker = getattr(getattr(stack, "broker", None), "proc", None)
    system = bench_limits.SystemCpu(
        server=server_pid,
        worker=worker.proc.pid if worker else None,
        broker=broker.pid if broker else None,
    )
    system0, idle0 = system.read(), bench_limits.machine_idle_seconds()
    # The server's process tree: with --workers, the supervisor and every worker.
    srv0, wrk0, cli0 = tree_cpu_seconds(server_pid), worker_cpu(), pool.cpu_seconds()
    # /metrics answers for the one process that accepts the request: batch figures for one.
    one_process = getattr(stack, "workers", 1) == 1
    batches0 = stack.batch_figures() if one_process and hasattr(stack, "batch_figures") else None
    wall0 = time.monotonic()
    database = None
    if getattr(args, "pg_statements", False) and step:  # not the warm-up
        database = pgstat.StepStatements(stack_module.PG_ADMIN_URL, stack.db_name)
    url = getattr(stack, "database_url", None)  # the ceiling has no database
    probe = bench_limits.CommitProbe(url) if url else None
    with database or contextlib.nullcontext(), probe or contextlib.nullcontext():
        pool.call_each(
            {i: ("run", step, rate * share, args.duration) for i, share in shares.items()},
            timeout=args.duration + 60,
        )
    reports = pool.call(list(shares), "report", step, None, args.drain, timeout=args.drain + 30)
    wall = time.monotonic() - wall0
    srv_cpu, wrk_cpu = tree_cpu_seconds(server_pid) - srv0, worker_cpu() - wrk0
    system_cpu = bench_limits.SystemCpu.delta(system0, system.read())
    batches = stats.batch_delta(batches0, stack.batch_figures() if batches0 is not None else None)
    cli_cpu = pool.cpu_seconds() - cli0
    machine_cpu = bench_limits.machine_summary(
        bench_limits.machine_idle_seconds() - idle0, wall, {**system_cpu, "clients": cli_cpu}
    )
    acked = sum(len(ids) for r in reports for ids in r["acked"].values())
    statements = None
    if database is not None:
        statements = database.report(acked, batches["batches"] if batches else None)
    kafka = watcher.report(step, acked, args.kafka_wait) if watcher else {"count": 0, "lag_ms": []}
    acks, deliveries = array("q"), array("q")
    for report in reports:
        acks.frombytes(report["ack_ns"])
        deliveries.frombytes(report["delivery_ns"])
    first_send = min(r["first_send"] for r in reports if r["first_send"])
    last_ack = max(r["last_ack"] for r in reports)
    span = max(args.duration, (last_ack - first_send) / 1e9)
    errors = stats.merge_counts(r["errors"] for r in reports)
    kafka_lat = stats.latency_summary(int(ms * 1e6) for ms in kafka["lag_ms"])
    return {
        "rate": rate,
        "sent": sum(r["sent"] for r in reports),
        "acked": acked,
        "acked_per_s": round(acked / span),
        "unacked": sum(r["unacked"] for r in reports),
        "errors": sum(errors.values()),
        "error_codes": errors,
        "closed": sum(r["closed"] for r in reports),
        "close_codes": [r["close_codes"] for r in reports if r["close_codes"]],
        "ack_latency": stats.latency_summary(acks),
        "latency": stats.latency_summary(deliveries),
        "lost": sum(r["lost"] for r in reports),
        "kafka_count": kafka["count"],
        "kafka_lag": kafka_lat,
        "server_cpu_pct": round(100 * srv_cpu / wall),
        "worker_cpu_pct": round(100 * wrk_cpu / wall),
        "client_cpu_pct": round(100 * cli_cpu / wall),
        "send_batches": batches,
        "cpu_ms_per_send": round(sum(system_cpu.values()) * 1000 / acked, 3) if acked else None,
        "cpu_per_send": bench_limits.per_unit_ms(system_cpu, acked),
        "machine": machine_cpu,
        "pg_statements": statements,
        "db_commit": probe.summary() if probe else None,
    }


def step_passes(step: dict) -> bool:
    return (
        step["ack_latency"]["count"] > 0
        and step["ack_latency"]["p99_ms"] <= ACK_P99_BOUND_MS
        and not (step["errors"] or step["unacked"] or step["closed"])
    )


# The cost target (issue 18) is the CPU per acked send at this step of the ladder.
COST_RATE = 1000.0
COST_TARGET_MS = 1.0


def cost_line(steps: list[dict]) -> str:
    """The cost target's line: CPU per acked send at the 1,000/s step, held or not (a
    higher step costs less per send, as its batches are bigger, so the highest step held
    is not the figure)."""
    step = next((s for s in steps if s["rate"] == COST_RATE), None)
    if step is None or step.get("cpu_ms_per_send") is None:
        return f"writes: cost: no {COST_RATE:,.0f}/s step in this ladder (target measured there)"
    verdict = "met" if step["cpu_ms_per_send"] <= COST_TARGET_MS else "missed"
    return (
        f"writes: cost: CPU per acked send at {COST_RATE:,.0f}/s {step['cpu_ms_per_send']} ms "
        f"(target <= {COST_TARGET_MS:g} ms): {verdict}"
    )


def step_line(step: dict) -> str:
    ack, lat, kafka = step["ack_latency"], step["latency"], step["kafka_lag"]
    return (
        f"{step['rate']:>6}/s  acked {step['acked']:>6} = {step['acked_per_s']:>5}/s  "
        f"ack p50 {ack['p50_ms']} p99 {ack['p99_ms']} ms  deliv p99 {lat['p99_ms']} ms "
        f"lost {step['lost']}  kafka {step['kafka_count']}/{step['acked']} "
        f"p50 {kafka['p50_ms']} p99 {kafka['p99_ms']} ms  srv {step['server_cpu_pct']}% "
        f"celery {step['worker_cpu_pct']}% cli {step['client_cpu_pct']}%  "
        f"{'ok' if step_passes(step) else 'MISS'}{stats.trouble(step)}"
        + stats.batch_note(step.get("send_batches"))
        + bench_limits.commit_note(step.get("db_commit"))
        + f"\n        CPU per acked send: {step['cpu_per_send']}"
        + (f"\n        {bench_limits.machine_note(step['machine'])}" if step.get("machine") else "")
    )


def run(stack, args, rates, started) -> list[dict]:
    """Seed, connect, and climb the rate ladder against a started stack."""
    pool = watcher = None
    steps = []
    try:
        if args.ceiling:  # no accounts there: any socket may use any room number
            rooms = [[(None, r + 1, True)] * args.members for r in range(args.rooms)]
        else:
            if args.without_search:
                from django.db import connection

                from apps.messaging import search

                search.drop_index(connection)  # the bench's own database only
                print("without the search index (column and GIN index dropped)", flush=True)
            users = make_users(args.rooms * args.members, f"{stack.tag}w")
            groups = [users[r * args.members : (r + 1) * args.members] for r in range(args.rooms)]
            room_ids = make_rooms(
                [
                    (group[0][0], [uid for uid, _ in group], f"writes {r}")
                    for r, group in enumerate(groups)
                ]
            )
            rooms = [
                [(token, room, True) for _, token in group]
                for room, group in zip(room_ids, groups, strict=False)
            ]
            print(
                f"seeded {len(users)} users, {len(rooms)} rooms in "
                f"{time.monotonic() - started:.0f}s",
                flush=True,
            )
        pool = Pool(args.procs)
        parts = split(rooms, args.procs)  # whole rooms per process: loss is counted locally
        t0 = time.monotonic()
        replies = pool.call_each(
            {
                i: ("connect", "127.0.0.1", stack.port, [spec for room in part for spec in room])
                for i, part in enumerate(parts)
            },
            timeout=180,
        )
        if any(r["failed"] for r in replies):
            raise RuntimeError(f"sockets failed to connect: {replies}")
        total = args.rooms * args.members
        shares = {i: sum(len(room) for room in part) / total for i, part in enumerate(parts)}
        print(f"{total} sockets connected in {time.monotonic() - t0:.1f}s", flush=True)
        if not args.ceiling:
            watcher = KafkaLag(stack.env["KAFKA_BOOTSTRAP_SERVERS"], stack.topic)
        run_step(
            pool,
            shares,
            stack,
            watcher,
            0,
            rates[0] / 2,
            argparse.Namespace(duration=2, drain=args.drain, kafka_wait=5),
        )  # warm-up, not reported
        for index, rate in enumerate(rates, start=1):
            profiler = None
            if args.profile == rate:
                from bench.profile import Profiler

                path = ROOT / "bench" / "profiles" / f"writes-{rate:g}.txt"
                profiler = Profiler(stack.pid, args.duration, path, wall=args.wall)
            step = run_step(pool, shares, stack, watcher, index, rate, args)
            if profiler is not None and profiler.wait():
                from bench.profile import top

                step["profile"] = str(profiler.path.relative_to(ROOT))
                print(top(profiler.path, 15))
            steps.append(step)
            print(step_line(step), flush=True)
            if step.get("pg_statements"):
                print(pgstat.lines(step["pg_statements"]), flush=True)
            if not step_passes(step) and not args.full:
                break
    finally:
        if watcher:
            watcher.close()
        if pool:
            pool.close()
    return steps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument(
        "--rates", default="25,50,100,250,500,1000", help="comma-separated total send rates (msg/s)"
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per step")
    parser.add_argument("--drain", type=float, default=10.0, help="max wait for acks/deliveries")
    parser.add_argument(
        "--kafka-wait", type=float, default=15.0, help="max wait for a step's events on Kafka"
    )
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument(
        "--ceiling",
        action="store_true",
        help="run the same load against the ceiling server (checks the generator)",
    )
    parser.add_argument(
        "--pg-clients",
        type=int,
        default=4,
        help="pgbench clients for the limit (the server's database sessions)",
    )
    parser.add_argument("--no-limits", action="store_true", help="skip measuring the limits")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="chat server processes on the port (serve --workers; srv%% is their total)",
    )
    parser.add_argument(
        "--without-search",
        action="store_true",
        help="drop the full-text index in the bench database first (issue 16: the send path "
        "with and without it)",
    )
    parser.add_argument(
        "--pg-statements",
        action="store_true",
        help="run against a private PostgreSQL cluster with pg_stat_statements (bench/pgstat.py) "
        "and print each step's top statements and the sessions' wait events",
    )
    ladder_arguments(parser)
    args = parser.parse_args(argv)
    stop_cleanly_on_sigterm()
    cluster = None
    if args.pg_statements:
        cluster = pgstat.start_cluster()
        stack_module.PG_ADMIN_URL = cluster.url
        print(f"database: a private cluster with pg_stat_statements, {cluster.url}", flush=True)
    try:
        return _main(args)
    finally:
        if cluster is not None:
            cluster.destroy()


def _main(args) -> int:
    rates = [float(r) for r in args.rates.split(",")]
    started = time.monotonic()
    print(
        f"writes: {args.rooms} rooms x {args.members} members, every socket sending, rates "
        f"{rates}, {args.duration:g}s steps, {args.workers} server process"
        f"{'es' if args.workers > 1 else ''}  ({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}"
        f" UTC, {machine()})",
        flush=True,
    )
    limits = (
        None
        if args.no_limits
        else bench_limits.header(args.pg_clients, url=stack_module.PG_ADMIN_URL)
    )
    if limits:
        print(bench_limits.header_line(limits), flush=True)
    if args.ceiling:
        ceiling = CeilingServer().start()
        try:
            steps = run(ceiling, args, rates, started)
        finally:
            ceiling.stop()
    else:
        with ChatStack(
            settings=dict(kv.split("=", 1) for kv in args.set), workers=args.workers
        ) as stack:
            steps = run(stack, args, rates, started)
    best = None
    for step in steps:
        if not step_passes(step):
            break
        best = step
    print()
    if best:
        kafka = best["kafka_lag"]
        print(
            f"writes: highest rate held (ack p99 <= {ACK_P99_BOUND_MS:g} ms): {best['rate']:g}/s "
            f"-> {best['acked_per_s']} acked/s, ack p50 {best['ack_latency']['p50_ms']} "
            f"p99 {best['ack_latency']['p99_ms']} ms; Kafka lag p50 {kafka['p50_ms']} "
            f"p99 {kafka['p99_ms']} ms ({best['kafka_count']}/{best['acked']} read)"
        )
        if limits:
            print(
                f"writes: held / pgbench -N tps = {best['acked_per_s']} / "
                f"{limits['pgbench_tps']:,.0f} = "
                f"{best['acked_per_s'] / limits['pgbench_tps']:.2f}x (target >= 0.5x); "
                f"held / raw send statements = "
                f"{best['acked_per_s'] / limits['raw_send_rate']:.2f}x"
            )
    else:
        print("writes: no rate held")
    print(cost_line(steps))
    print(f"(total {time.monotonic() - started:.0f}s)")
    if args.json:
        args.json.write_text(json.dumps({"limits": limits, "steps": steps}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
