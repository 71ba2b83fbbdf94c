"""Fan-out benchmark: one room, N subscribers, senders at a fixed total rate, rate ladder.

    .venv/bin/python -m bench.fanout --subscribers 500
    .venv/bin/python -m bench.fanout --subscribers 50 --rates 100,200,300,400,600

Runs the ceiling (bench/ceiling.py) first, then the chat stack (bench/stack.py), through the
same generator, and prints one line per step and a summary with chat/ceiling ratios. A step
holds when delivery p99 <= 100 ms (200 ms for 5,000 subscribers; --p99) and nothing was lost,
refused, left unacked or closed; the ladder of a target stops at its first failed step. Each
step also prints the CPU per delivery of every process involved (server, worker, broker,
PostgreSQL, Redis: bench/limits.py).
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
from bench import stats
from bench.loadgen import Pool, ladder_arguments, split
from bench.stack import (
    ROOT,
    CeilingServer,
    ChatStack,
    machine,
    make_room,
    make_users,
    stop_cleanly_on_sigterm,
    tree_cpu_seconds,
)

P99_BOUND_MS = 100.0
# The big room's target (issue 18) is p99 <= 200 ms at 10 msg/s (50,000 deliveries/s).
P99_BOUNDS = {5000: 200.0}
DEFAULT_RATES = {
    50: [10, 25, 50, 100, 200, 400, 600, 800, 1000, 1500],
    500: [2, 5, 10, 20, 40, 80, 120, 160],
    # The big room (issue 18): 10 msg/s is 50,000 deliveries/s.
    5000: [1, 2, 5, 10, 20],
}


def merge_acked(reports) -> dict[int, list[int]]:
    merged: dict[int, list[int]] = {}
    for report in reports:
        for room, ids in report["acked"].items():
            merged.setdefault(room, []).extend(ids)
    return merged


def run_step(
    pool,
    senders,
    receivers,
    server_pid,
    step,
    rate,
    duration,
    drain,
    others=None,
    db_url=None,
    batch_figures=None,
) -> dict:
    system = bench_limits.SystemCpu(
        services=others is not None, server=server_pid, **(others or {})
    )
    system0, idle0 = system.read(), bench_limits.machine_idle_seconds()
    # The server's process tree: with --workers, the supervisor and every worker.
    srv0, cli0, wall0 = tree_cpu_seconds(server_pid), pool.cpu_seconds(), time.monotonic()
    batches0 = batch_figures() if batch_figures else None
    pool.call(receivers, "run", step, 0, 0)
    probe = bench_limits.CommitProbe(db_url) if db_url else None
    with probe or contextlib.nullcontext():
        pool.call(senders, "run", step, rate, duration, timeout=duration + 60)
    sent_reports = pool.call(senders, "report", step, None, drain, timeout=drain + 30)
    acked = merge_acked(sent_reports)
    recv_reports = pool.call(receivers, "report", step, acked, drain, timeout=drain + 30)
    wall = time.monotonic() - wall0
    srv_cpu, cli_cpu = tree_cpu_seconds(server_pid) - srv0, pool.cpu_seconds() - cli0
    system_cpu = bench_limits.SystemCpu.delta(system0, system.read())
    machine_cpu = bench_limits.machine_summary(
        bench_limits.machine_idle_seconds() - idle0, wall, {**system_cpu, "clients": cli_cpu}
    )
    batches = stats.batch_delta(batches0, batch_figures() if batch_figures else None)
    latencies = array("q")
    for report in recv_reports:
        latencies.frombytes(report["delivery_ns"])
    acks = array("q")
    for report in sent_reports:
        acks.frombytes(report["ack_ns"])
    everything = sent_reports + recv_reports
    first_send = min(r["first_send"] for r in sent_reports)
    last_receipt = max(r["last_receipt"] for r in recv_reports)
    span = max(1e-9, (last_receipt - first_send) / 1e9)
    deliveries = sum(r["deliveries"] for r in recv_reports)
    errors = stats.merge_counts(r["errors"] for r in everything)
    return {
        "rate": rate,
        "sent": sum(r["sent"] for r in sent_reports),
        "acked": sum(len(ids) for ids in acked.values()),
        "unacked": sum(r["unacked"] for r in sent_reports),
        "errors": sum(errors.values()),
        "error_codes": errors,
        "deliveries": deliveries,
        "deliveries_per_s": round(deliveries / span) if deliveries else 0,
        "latency": stats.latency_summary(latencies),
        "ack_latency": stats.latency_summary(acks),
        "lost": sum(r["lost"] for r in recv_reports),
        "stale": sum(r["stale"] for r in recv_reports),
        "closed": sum(r["closed"] for r in everything),
        "close_codes": [r["close_codes"] for r in everything if r["close_codes"]],
        "server_cpu_pct": round(100 * srv_cpu / wall),
        "client_cpu_pct": round(100 * cli_cpu / wall),
        "cpu_ms_per_delivery": round(sum(system_cpu.values()) * 1000 / deliveries, 4)
        if deliveries
        else None,
        "cpu_per_delivery": bench_limits.per_unit_ms(system_cpu, deliveries),
        "cpu_per_send": bench_limits.per_unit_ms(
            system_cpu, sum(len(ids) for ids in acked.values())
        ),
        "machine": machine_cpu,
        "db_commit": probe.summary() if probe else None,
        "send_batches": batches,
    }


def step_line(name, step, p99_ms: float = P99_BOUND_MS) -> str:
    lat = step["latency"]
    verdict = "ok" if stats.step_passes(step, p99_ms=p99_ms) else "MISS"
    return (
        f"{name:8} {step['rate']:>6}/s  sent {step['sent']:>6} acked {step['acked']:>6}  "
        f"deliv {step['deliveries_per_s']:>6}/s  p50 {lat['p50_ms']} p99 {lat['p99_ms']} "
        f"max {lat['max_ms']} ms (ack p99 {step['ack_latency']['p99_ms']})  lost {step['lost']}  "
        f"srv {step['server_cpu_pct']}% cli {step['client_cpu_pct']}%  {verdict}{stats.trouble(step)}"
        f"{bench_limits.commit_note(step.get('db_commit'))}"
        f"{stats.batch_note(step.get('send_batches'))}"
        f"\n         CPU per delivery: {step['cpu_per_delivery']}"
        + (f"; per acked send: {step['cpu_per_send']}" if step.get("cpu_per_send") else "")
        + (
            f"\n         {bench_limits.machine_note(step['machine'])}"
            if step.get("machine")
            else ""
        )
    )


def ladder(
    name,
    *,
    host,
    port,
    server_pid,
    sub_specs,
    send_specs,
    rates,
    args,
    profile_at=None,
    others=None,
    db_url=None,
    batch_figures=None,
) -> list[dict]:
    pool = Pool(args.procs + 1)
    senders, receivers = [0], list(range(1, args.procs + 1))
    try:
        t0 = time.monotonic()
        commands = {0: ("connect", host, port, send_specs)}
        for i, part in zip(receivers, split(sub_specs, len(receivers)), strict=False):
            commands[i] = ("connect", host, port, part)
        replies = pool.call_each(commands, timeout=180)
        failed = sum(r["failed"] for r in replies)
        if failed:
            raise RuntimeError(f"{name}: {failed} sockets failed to connect: {replies}")
        print(
            f"{name:8} {len(sub_specs)} subscribers + {len(send_specs)} senders connected "
            f"in {time.monotonic() - t0:.1f}s",
            flush=True,
        )
        # Warm-up (not reported): connection pools, caches, first-call imports.
        run_step(
            pool, senders, receivers, server_pid, 0, rates[0] / 2, 2, args.drain, others, db_url
        )
        steps = []
        for index, rate in enumerate(rates, start=1):
            profiler = None
            if profile_at is not None and rate == profile_at:
                from bench.profile import Profiler

                path = ROOT / "bench" / "profiles" / f"fanout-{name}-{len(sub_specs)}-{rate:g}.txt"
                profiler = Profiler(server_pid, args.duration, path, wall=args.wall)
            step = run_step(
                pool,
                senders,
                receivers,
                server_pid,
                index,
                rate,
                args.duration,
                args.drain,
                others,
                db_url,
                batch_figures,
            )
            if profiler is not None:
                path = profiler.wait()
                if path:
                    from bench.profile import top

                    step["profile"] = str(path.relative_to(ROOT))
                    print(top(path, 15))
            steps.append(step)
            print(step_line(name, step, args.p99), flush=True)
            if not stats.step_passes(step, p99_ms=args.p99) and not args.full:
                break
        return steps
    finally:
        pool.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", type=int, default=500)
    parser.add_argument("--rates", help="comma-separated total send rates (msg/s)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per step")
    parser.add_argument("--drain", type=float, default=5.0, help="max wait for late frames")
    parser.add_argument("--senders", type=int, default=10, help="sending sockets")
    parser.add_argument("--procs", type=int, default=2, help="receiving client processes")
    parser.add_argument("--only", choices=["chat", "ceiling"], help="run one target only")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="chat server processes on the port (serve --workers; srv%% is their total)",
    )
    ladder_arguments(parser)
    parser.add_argument(
        "--p99",
        type=float,
        help="delivery p99 bound of a step, ms (100; 200 for 5,000 subscribers)",
    )
    args = parser.parse_args(argv)
    if args.p99 is None:
        args.p99 = P99_BOUNDS.get(args.subscribers, P99_BOUND_MS)
    stop_cleanly_on_sigterm()
    rates = (
        [float(r) for r in args.rates.split(",")]
        if args.rates
        else DEFAULT_RATES.get(args.subscribers, DEFAULT_RATES[500])
    )
    started = time.monotonic()
    print(
        f"fan-out: {args.subscribers} subscribers, {args.senders} senders, rates {rates}, "
        f"{args.duration:g}s steps, p99 bound {args.p99:g} ms, {args.procs} receiving processes, "
        f"{args.workers} server process{'es' if args.workers > 1 else ''}  "
        f"({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {machine()})",
        flush=True,
    )
    results = {}
    if args.only != "chat":
        ceiling = CeilingServer().start()
        try:
            subs = [(None, 1, True)] * args.subscribers
            sends = [(None, 1, False)] * args.senders
            results["ceiling"] = ladder(
                "ceiling",
                host="127.0.0.1",
                port=ceiling.port,
                server_pid=ceiling.pid,
                sub_specs=subs,
                send_specs=sends,
                rates=rates,
                args=args,
                profile_at=args.profile,
            )
        finally:
            ceiling.stop()
    if args.only != "ceiling":
        with ChatStack(
            settings=dict(kv.split("=", 1) for kv in args.set), workers=args.workers
        ) as stack:
            users = make_users(args.subscribers + args.senders, f"{stack.tag}u")
            room = make_room(users[0][0], [uid for uid, _ in users], "fan-out bench")
            subs = [(token, room, True) for _, token in users[: args.subscribers]]
            sends = [(token, room, False) for _, token in users[args.subscribers :]]
            others = {
                "worker": stack.worker.proc.pid if stack.worker else None,
                "broker": stack.broker.proc.pid if stack.broker else None,
            }
            results["chat"] = ladder(
                "chat",
                host="127.0.0.1",
                port=stack.port,
                server_pid=stack.pid,
                sub_specs=subs,
                send_specs=sends,
                rates=rates,
                args=args,
                profile_at=args.profile,
                others=others,
                db_url=stack.database_url,
                # /metrics answers for the process that accepts the request: one worker only.
                batch_figures=stack.batch_figures if args.workers == 1 else None,
            )
    print()
    print(summary(results, args.subscribers, args.p99))
    print(f"(total {time.monotonic() - started:.0f}s)")
    if args.json:
        args.json.write_text(
            json.dumps({"subscribers": args.subscribers, "results": results}, indent=1)
        )
    return 0


def summary(results: dict, subscribers: int, p99_ms: float = P99_BOUND_MS) -> str:
    held = {name: stats.highest_held(steps, p99_ms=p99_ms) for name, steps in results.items()}
    lines = [
        f"fan-out {subscribers} subscribers: highest rate held (p99 <= {p99_ms:g} ms, nothing lost)"
    ]
    for name in ("chat", "ceiling"):
        if name in held:
            rate = held[name]
            lines.append(
                f"  {name:8} {rate if rate is not None else 'none':>6} msg/s"
                + (f"  = {rate * subscribers:,.0f} deliveries/s" if rate else "")
            )
    if "chat" in held and "ceiling" in held:
        lines.append(f"  chat/ceiling: {stats.ratio(held['chat'], held['ceiling'])}")
        ceiling = {s["rate"]: s for s in results["ceiling"]}
        lines.append("  per step   chat p99 / ceiling p99     chat deliv/s / ceiling deliv/s")
        for step in results["chat"]:
            other = ceiling.get(step["rate"])
            if other:
                lines.append(
                    f"  {step['rate']:>6}/s  {step['latency']['p99_ms']} / "
                    f"{other['latency']['p99_ms']} ms"
                    f"  ({stats.ratio(step['latency']['p99_ms'], other['latency']['p99_ms'])})"
                    f"     {step['deliveries_per_s']} / {other['deliveries_per_s']}"
                    f"  ({stats.ratio(step['deliveries_per_s'], other['deliveries_per_s'])})"
                )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
