"""Connections benchmark: idle authenticated sockets held by one server process.

    .venv/bin/python -m bench.connections
    .venv/bin/python -m bench.connections --sockets 10000 --levels 1000,5000,10000 --idle 20

Opens sockets in levels (each does the token handshake and gets `hello`; with --subscribe each
also subscribes to one of 100 rooms), and at each level records the server's RSS; at the top
level it measures the server's CPU over --idle seconds with every socket idle: each socket
pings every heartbeat / 2 as the web client does (667 pings/s at 10,000 sockets with the 30 s
heartbeat); daphne's own auto-ping only goes to a socket silent for 20 s. Memory per socket =
(RSS - RSS with 10 sockets) / (sockets - 10). Sockets are spread over --procs client processes
(the 20,000 descriptor limit is per process: the server holds one per socket, each client
process its share).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

from bench.loadgen import Pool, split
from bench.profile import Profiler, top
from bench.stack import (
    ROOT,
    ChatStack,
    cpu_seconds,
    machine,
    make_rooms,
    make_users,
    rss_bytes,
    stop_cleanly_on_sigterm,
)

BASELINE_SOCKETS = 10


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sockets", type=int, default=10000)
    parser.add_argument("--levels", default="1000,2500,5000,7500,10000")
    parser.add_argument(
        "--users",
        type=int,
        default=1000,
        help="users owning the sockets (sockets/users each; limit 20 per user)",
    )
    parser.add_argument("--subscribe", action="store_true", help="each socket subscribes a room")
    parser.add_argument("--idle", type=float, default=20.0, help="idle CPU window (s)")
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument(
        "--deadline",
        type=float,
        default=170.0,
        help="stop opening sockets this many seconds after the start",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the server while the top level connects and while idle",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    stop_cleanly_on_sigterm()
    levels = sorted(
        {int(x) for x in args.levels.split(",") if int(x) <= args.sockets} | {args.sockets}
    )
    started = time.monotonic()
    print(
        f"connections: up to {args.sockets} idle sockets ({args.users} users"
        f"{', subscribed' if args.subscribe else ''}), levels {levels}  "
        f"({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {machine()})",
        flush=True,
    )
    result = {"levels": []}
    # Idle window and clean-up come after the last level: keep time for them.
    args.deadline_at = started + args.deadline - args.idle - 20
    with ChatStack(worker=False) as stack:
        measure(stack, args, levels, result)
    print(f"(total {time.monotonic() - started:.0f}s)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


def measure(stack, args, levels, result) -> None:
    """Open the sockets level by level, recording RSS, then the idle CPU, into result."""
    pool = None
    try:
        users = make_users(args.users, f"{stack.tag}c")
        rooms = [0]
        if args.subscribe:
            rooms = make_rooms([(users[r][0], [], f"idle {r}") for r in range(100)])
        specs = [
            (users[i % len(users)][1], rooms[i % len(rooms)], args.subscribe)
            for i in range(args.sockets)
        ]
        pool = Pool(args.procs)
        pid = stack.pid

        def open_sockets(batch):
            """Open a batch; returns (sockets opened, seconds taken)."""
            t0 = time.monotonic()
            replies = pool.call_each(
                {
                    i: ("connect", "127.0.0.1", stack.port, part, deadline)
                    for i, part in enumerate(split(batch, args.procs))
                },
                timeout=600,
            )
            failed = sum(r["failed"] for r in replies)
            if failed:
                raise RuntimeError(f"{failed} sockets failed: {[r['errors'] for r in replies]}")
            return sum(r["connected"] for r in replies), time.monotonic() - t0

        deadline = time.time() + (args.deadline_at - time.monotonic())
        held, _ = open_sockets(specs[:BASELINE_SOCKETS])
        time.sleep(2)
        base_rss = rss_bytes(pid)
        print(f"baseline: {held} sockets, server RSS {base_rss / 2**20:.1f} MiB", flush=True)
        for level in levels:
            profiler = None
            if args.profile and level == levels[-1]:
                profiler = Profiler(pid, 15, ROOT / "bench" / "profiles" / "connections.txt")
            opened, took = open_sockets(specs[held:level])
            if profiler is not None and profiler.wait(60):
                print(top(profiler.path, 20))
            held += opened
            time.sleep(2)
            rss = rss_bytes(pid)
            per = (rss - base_rss) / (held - BASELINE_SOCKETS)
            entry = {
                "sockets": held,
                "rss_mib": round(rss / 2**20, 1),
                "kib_per_socket": round(per / 1024, 1),
                "connects_per_s": round(opened / took) if took else None,
            }
            result["levels"].append(entry)
            print(
                f"{held:>6} sockets  RSS {entry['rss_mib']} MiB  {entry['kib_per_socket']} KiB"
                f"/socket  (opened {opened} at {entry['connects_per_s']}/s)",
                flush=True,
            )
            if held < level:
                print(
                    f"deadline: stopped opening sockets at {held} (--deadline {args.deadline:g}s)"
                )
                break
        profiler = None
        if args.profile:
            profiler = Profiler(
                pid, args.idle, ROOT / "bench" / "profiles" / "connections-idle.txt"
            )
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(args.idle)
        if profiler is not None and profiler.wait(60):
            print(top(profiler.path, 20))
        idle = 100 * (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
        pings = pool.call(range(args.procs), "ping", 0)
        still = sum(r["open"] for r in pings)
        codes = [r["close_codes"] for r in pings if r["close_codes"]]
        if codes:
            print(f"closed by the server during the run: close codes {codes}")
        result.update(
            idle_cpu_pct=round(idle, 2),
            open_after_idle=still,
            sockets=held,
            rss_mib=result["levels"][-1]["rss_mib"],
            kib_per_socket=result["levels"][-1]["kib_per_socket"],
        )
        print(
            f"\nconnections: {held} idle sockets, {still} still open after {args.idle:g}s idle; "
            f"server RSS {result['rss_mib']} MiB = {result['kib_per_socket']} KiB/socket; "
            f"idle CPU {result['idle_cpu_pct']}% of a core"
        )
    finally:
        if pool:
            pool.close()


if __name__ == "__main__":
    sys.exit(main())
