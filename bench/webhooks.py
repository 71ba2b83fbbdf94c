"""Outgoing webhook benchmark: 1,000 events/s across 100 rooms delivered to 10 receivers.

    .venv/bin/python -m bench.webhooks                 # 1000 ev/s, 20 s a phase
    .venv/bin/python -m bench.webhooks --rate 500 --duration 10
    .venv/bin/python -m bench.webhooks --quick         # 200 ev/s, 20 rooms, 4 receivers, 5 s
    .venv/bin/python -m bench.webhooks --profile       # py-spy on the worker in phase 2

Its own PostgreSQL database (bench/stack.py, no Kafka, no server process: deliveries read the
log), one owner of `--rooms` public rooms, `--receivers` outgoing webhooks each following every
room, each POSTing to its own receiver (asyncio HTTP servers in one child process, which check
every signature and each room's seq order and note commit-to-receipt lag per event). Events are
real: `--fillers` processes commit messages through the send service (message_send_many,
`--batch` per transaction, as the server's group commit), round-robin over the rooms. The
worker is the production command, `python manage.py deliver_webhooks`, in its own process.

Phases, `--duration` s of writes each:

1. ceiling — no webhooks delivering: a bare log poller in this process (one statement for the
   rooms' heads and one for the new rows every WEBHOOK_POLL_SECONDS, no HTTP) measures the lag
   floor of any delivery that polls the log at that interval on this machine under this load;
2. live — every receiver answers 200: lag p50/p99/max per receiver and overall;
3. one dead — receiver 0 accepts connections and never answers (the worker times out after
   WEBHOOK_TIMEOUT_SECONDS and backs off): the other receivers' lag, beside phase 2's.

Passes when phase 2's p99 <= 1 s, nothing is lost, out of order or badly signed, phase 3's
p99 of the live receivers <= 1 s, and the generator reached 95% of `--rate` (else the verdict
says NOT AT THE RATE: the load was not offered). Beside each phase's lag it prints the limits
measured in that phase: the rate the generator committed, the worker's CPU per delivery (from
/proc) and so the deliveries/s one core of it could do against the deliveries/s asked, and how
busy the whole machine was; and what the work cost: POSTs per event, the worker's database
statements per batch and planning rounds (its counters, printed on SIGUSR1).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import hmac
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time

from bench import stats
from bench.stack import (
    ROOT,
    ChatStack,
    cpu_seconds,
    machine,
    make_users,
    stop_cleanly_on_sigterm,
)

SECRET = "bench-webhook-secret-0123456789"
P99_BOUND_MS = 1000.0


def _ts(text: str) -> float:
    # fromisoformat (3.11 reads the Z) rather than strptime: ten times cheaper, and the one
    # receiver process parses every event of every receiver.
    return dt.datetime.fromisoformat(text).timestamp()


# --- Receivers (a child process) ----------------------------------------------------------------


def receivers_main(conn, count: int) -> None:
    """`count` HTTP receivers on spare ports. Commands: ("reset",), ("dead", i), ("report",)."""
    state = {"dead": set(), "data": None}

    def fresh():
        return [
            {
                "lags": [],
                "posts": 0,
                "bad_sig": 0,
                "disorder": 0,
                "events": 0,
                "dups": 0,
                "last": {},
                "seen": set(),
            }
            for _ in range(count)
        ]

    state["data"] = fresh()

    async def handle(index, reader, writer):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            headers = {}
            for line in head.decode("latin-1").split("\r\n")[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", 0)))
            if index in state["dead"]:
                await reader.read()  # hung: never answers (until the worker gives up)
                return
            now = time.time()
            d = state["data"][index]
            d["posts"] += 1
            expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(headers.get("x-chat-signature", ""), expected):
                d["bad_sig"] += 1
            for event in json.loads(body)["events"]:
                if event["id"] in d["seen"]:
                    d["dups"] += 1
                    continue
                d["seen"].add(event["id"])
                d["events"] += 1
                last = d["last"].get(event["room"])
                if last is not None and event["seq"] <= last:
                    d["disorder"] += 1
                d["last"][event["room"]] = event["seq"]
                d["lags"].append(now - _ts(event["ts"]))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main():
        servers, ports = [], []
        for index in range(count):
            server = await asyncio.start_server(
                lambda r, w, i=index: handle(i, r, w), "127.0.0.1", 0, backlog=512
            )
            servers.append(server)
            ports.append(server.sockets[0].getsockname()[1])
        conn.send({"ports": ports})
        loop = asyncio.get_running_loop()
        while True:
            command = await loop.run_in_executor(None, conn.recv)
            if command[0] == "quit":
                return
            if command[0] == "reset":
                state["data"] = fresh()
                conn.send("ok")
            elif command[0] == "dead":
                state["dead"].add(command[1])
                conn.send("ok")
            elif command[0] == "report":
                conn.send(
                    [
                        {k: v for k, v in d.items() if k not in ("seen", "last")}
                        for d in state["data"]
                    ]
                )

    asyncio.run(main())


class Receivers:
    def __init__(self, count: int):
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=receivers_main, args=(child, count), daemon=True)
        self.proc.start()
        if not self.conn.poll(60):
            raise TimeoutError("receivers did not start")
        self.ports = self.conn.recv()["ports"]

    def call(self, *command):
        self.conn.send(command)
        if command[0] != "quit":
            return self.conn.recv()

    def close(self):
        try:
            self.call("quit")
        except (OSError, EOFError):
            pass
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()


# --- The ceiling: a bare log poller -----------------------------------------------------------


class BarePoller(threading.Thread):
    """Reads new room-log rows every `interval` (heads, then the rows after the last seen seq
    of each changed room), noting commit-to-read lag: the floor of log polling, no HTTP."""

    def __init__(self, room_ids, interval):
        super().__init__(daemon=True)
        self.room_ids, self.interval = room_ids, interval
        self.stop_flag = threading.Event()
        self.lags: list[float] = []

    def run(self):
        from django.db import connection

        from apps.rooms.models import Room

        seen = dict(Room.objects.filter(pk__in=self.room_ids).values_list("pk", "last_seq"))
        while not self.stop_flag.is_set():
            heads = dict(Room.objects.filter(pk__in=self.room_ids).values_list("pk", "last_seq"))
            changed = {r: (seen[r], h) for r, h in heads.items() if h > seen[r]}
            if changed:
                with connection.cursor() as cursor:
                    where = " OR ".join(
                        ["(room_id = %s AND seq > %s AND seq <= %s)"] * len(changed)
                    )
                    params = [x for r, (lo, hi) in changed.items() for x in (r, lo, hi)]
                    cursor.execute(f"SELECT ts FROM events_event WHERE {where}", params)
                    now = time.time()
                    self.lags += [now - ts.timestamp() for (ts,) in cursor.fetchall()]
                seen.update({r: h for r, (_, h) in changed.items()})
            self.stop_flag.wait(self.interval)
        connection.close()


# --- Phases -----------------------------------------------------------------------------------


def summary(lags_s: list[float]) -> dict:
    return stats.latency_summary(int(x * 1e9) for x in lags_s)


def drained(hook_ids, timeout) -> bool:
    from django.db.models import F

    from apps.integrations.models import WebhookCursor

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        behind = WebhookCursor.objects.filter(
            webhook_id__in=hook_ids, seq__lt=F("room__last_seq")
        ).count()
        if not behind:
            return True
        time.sleep(0.2)
    return False


def fmt(s: dict) -> str:
    return f"p50 {s['p50_ms']} ms  p99 {s['p99_ms']} ms  max {s['max_ms']} ms  (n={s['count']})"


QUICK = {"rate": 200.0, "rooms": 20, "receivers": 4, "duration": 5.0, "fillers": 1}


def worker_stats(worker) -> dict:
    """The worker's counters so far (statements, plans, batches_ok, events_ok...): SIGUSR1
    makes `deliver_webhooks` print them as one JSON line."""
    worker.send_signal(signal.SIGUSR1)
    return json.loads(worker.stdout.readline())


def limits_line(asked: float, sent: dict, cpu: float, deliveries: int, busy: int) -> str:
    """The limits measured in the phase itself, beside its lag: the rate the generator
    reached, what a delivery costs the worker in CPU and so how many a core of it could do,
    and how busy the whole machine was."""
    committed = sent["sent"] / sent["seconds"]
    per = cpu / max(deliveries, 1)
    capacity = 1 / per if per else float("inf")
    return (
        f"         limits: generator committed {committed:.0f} of {asked:g} ev/s asked "
        f"(behind by {sent['behind_s']:.2f} s at worst); worker {1e6 * per:.0f} us CPU per "
        f"delivery = {capacity:,.0f} deliveries/s per core it could do, "
        f"{committed * deliveries / max(sent['sent'], 1):,.0f}/s asked of it; machine busy "
        f"{busy}% of one core (of {100 * os.cpu_count()}%)"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small and short (a check that it works): "
        + ", ".join(f"--{k} {v:g}" for k, v in QUICK.items())
        + " unless given",
    )
    parser.add_argument("--rate", type=float, default=1000.0, help="events (messages) per s")
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--receivers", type=int, default=10)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of writes a phase")
    parser.add_argument("--fillers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=20, help="sends per transaction")
    parser.add_argument("--json", help="write every figure to this file")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the worker during the live phase (bench/profiles/webhooks-worker.txt)",
    )
    if "--quick" in (sys.argv[1:] if argv is None else argv):
        parser.set_defaults(**QUICK)
    args = parser.parse_args(argv)
    stop_cleanly_on_sigterm()
    from bench.outbox import Fillers, busy_pct, machine_busy

    print(f"# webhooks bench — {machine()} — {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC")
    print(
        f"# {args.rate:g} events/s across {args.rooms} rooms to {args.receivers} receivers, "
        f"{args.duration:g} s a phase (the machine is shared: figures drift with its load)"
    )
    results = {"args": vars(args), "machine": machine()}
    settings = {"WEBHOOK_ALLOWED_HOSTS": "127.0.0.1"}
    receivers = fillers = worker = None
    with ChatStack(settings=settings, worker=False, kafka=False, server=False) as stack:
        try:
            from django.conf import settings as django_settings
            from django.contrib.auth import get_user_model

            from apps.integrations import services as hooks
            from apps.rooms import services as rooms

            owner = get_user_model().objects.get(pk=make_users(1, "owner")[0][0])
            room_ids = [
                rooms.room_create(creator=owner, name=f"room {i}").pk for i in range(args.rooms)
            ]
            fillers = Fillers([(r, owner.pk) for r in room_ids], args.fillers, args.batch)
            fillers.run(0, 200, 1.0)  # warm up the send path

            # 1. The ceiling.
            poller = BarePoller(room_ids, django_settings.WEBHOOK_POLL_SECONDS)
            poller.start()
            sent = fillers.run(1, args.rate, args.duration)
            time.sleep(0.5)
            poller.stop_flag.set()
            poller.join(5)
            ceiling = summary(poller.lags)
            results["ceiling"] = {"lag": ceiling, "writes": sent}
            print(
                f"ceiling  bare log poller: {fmt(ceiling)}; committed "
                f"{sent['sent'] / sent['seconds']:.0f} ev/s, errors {sent['errors']}"
            )

            # 2. Live receivers.
            receivers = Receivers(args.receivers)
            hook_ids = [
                hooks.webhook_create(
                    owner=owner, url=f"http://127.0.0.1:{p}/hook", secret=SECRET
                ).pk
                for p in receivers.ports
            ]
            from tests.support.services import PYTHON

            worker = subprocess.Popen(
                [PYTHON, str(ROOT / "manage.py"), "deliver_webhooks"],
                env=stack.env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            worker.stdout.readline()  # "delivering webhooks ...": Django is up
            fillers.run(0, 100, 1.0)  # one warm-up delivery to every receiver
            if not drained(hook_ids, 120):
                raise RuntimeError("the worker did not deliver the warm-up events")
            for phase, dead in (("live", None), ("one dead", 0)):
                if dead is not None:
                    receivers.call("dead", dead)
                receivers.call("reset")
                profile = None
                if args.profile and dead is None:
                    from bench.profile import Profiler

                    profile = Profiler(
                        worker.pid, args.duration, ROOT / "bench/profiles/webhooks-worker.txt"
                    )
                cpu0, stats0, busy0 = cpu_seconds(worker.pid), worker_stats(worker), machine_busy()
                sent = fillers.run(2 if dead is None else 3, args.rate, args.duration)
                live_ids = [h for i, h in enumerate(hook_ids) if i != dead]
                ok = drained(live_ids, 60)
                cpu, busy = cpu_seconds(worker.pid) - cpu0, busy_pct(busy0, machine_busy())
                work = {k: v - stats0.get(k, 0) for k, v in worker_stats(worker).items()}
                report = receivers.call("report")
                live = [r for i, r in enumerate(report) if i != dead]
                overall = summary([x for r in live for x in r["lags"]])
                per = [summary(r["lags"]) for r in live]
                events = sum(r["events"] for r in live)
                posts = sum(r["posts"] for r in live)
                faults = {k: sum(r[k] for r in live) for k in ("bad_sig", "disorder", "dups")}
                missing = sent["sent"] * len(live) - events
                batches = work.get("batches_ok", 0) + work.get("batches_failed", 0)
                results[phase] = {
                    "lag": overall,
                    "per_receiver": per,
                    "posts": posts,
                    "events": events,
                    "missing": missing,
                    "drained": ok,
                    "worker_cpu_s": round(cpu, 2),
                    "worker": work,
                    "machine_busy_pct": busy,
                    "writes": sent,
                    **faults,
                }
                print(
                    f"{phase:8} {len(live)} receivers: {fmt(overall)}; committed "
                    f"{sent['sent'] / sent['seconds']:.0f} ev/s"
                )
                print(f"         per receiver p99 ms: {[p['p99_ms'] for p in per]}")
                print(
                    f"         {posts} POSTs for {events} events ({posts / max(events, 1):.3f} "
                    f"per event); missing {missing}, out of order {faults['disorder']}, "
                    f"bad signatures {faults['bad_sig']}, redelivered {faults['dups']}; "
                    f"drained {ok}"
                )
                print(
                    f"         worker: {work.get('statements', 0)} statements for {batches} "
                    f"batches ({work.get('statements', 0) / max(batches, 1):.2f} a batch), "
                    f"{work.get('plans', 0)} planning rounds, {work.get('log_rows', 0)} log rows "
                    f"read ({work.get('log_rows', 0) / max(sent['sent'], 1):.2f} per event "
                    f"committed); CPU {cpu:.2f} s"
                )
                print(limits_line(args.rate, sent, cpu, events, busy))
                if dead is not None:
                    print(
                        f"         dead receiver got {report[dead]['posts']} answered POSTs "
                        f"(it answers none)"
                    )
                if profile is not None and profile.wait(60):
                    from bench.profile import by_app, top

                    print(top(profile.path, 20) + "\n\n" + by_app(profile.path, 20))
            reached = all(
                results[p]["writes"]["sent"] / results[p]["writes"]["seconds"] >= 0.95 * args.rate
                for p in ("live", "one dead")
            )
            verdict = (
                results["live"]["lag"]["p99_ms"] <= P99_BOUND_MS
                and results["one dead"]["lag"]["p99_ms"] <= P99_BOUND_MS
                and all(
                    results[p]["missing"] == 0
                    and results[p]["disorder"] == 0
                    and results[p]["bad_sig"] == 0
                    for p in ("live", "one dead")
                )
            )
            results["pass"] = verdict and reached
            print(
                f"verdict: {'PASS' if verdict else 'MISS'} (p99 <= {P99_BOUND_MS:g} ms, "
                f"nothing lost, out of order or badly signed)"
                + (
                    ""
                    if reached
                    else f"; NOT AT THE RATE: the generator fell short of {args.rate:g} ev/s"
                )
                + f"; load now {machine()}"
            )
        finally:
            if worker is not None:
                worker.terminate()
                try:
                    worker.wait(15)
                except subprocess.TimeoutExpired:
                    worker.kill()
            if fillers is not None:
                fillers.close()
            if receivers is not None:
                receivers.close()
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2, default=str)
    return 0 if results.get("pass") else 1


if __name__ == "__main__":
    sys.exit(main())
