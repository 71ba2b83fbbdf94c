"""Load-generator worker processes, driven by a benchmark through a pipe.

Each worker is one process with one asyncio loop holding many sockets (bench/wsclient.py).
A socket may subscribe to a room (it then counts deliveries and their latency) and may send
(`message.send` at a fixed rate; it then measures ack latency). Message bodies carry the
step, a unique number and the send time (`bench <step> <n> <monotonic ns>`), so a receiver
gets the delivery latency from the frame alone; CLOCK_MONOTONIC is one clock for every process
on the machine. Nothing is decoded as JSON on the hot path: a regex picks the body out.

Commands (tuples over the pipe; every command gets one reply):
  ("connect", host, port, [(token, room, subscribe), ...], deadline)
                                     -> {"connected", "skipped", "failed", "errors"}
  ("run", step, rate, duration)      start counting step; senders send `rate` msg/s in total for
                                     `duration` s (0 for pure receivers); replies when sent
  ("report", step, expected, wait)   expected: {room: [n, ...]} (None: this worker's own acks);
                                     waits up to `wait` s for acks and deliveries, then figures
  ("ping", count)                    every socket sends `count` ping frames; replies how many
                                     are still open (a background task pings every socket each
                                     heartbeat / 2 as the web client does)
  ("quit",)
"""

from __future__ import annotations

import array
import asyncio
import random
import re
import time
import uuid
from collections import Counter

from bench.wsclient import Inbox, connect

BODY = re.compile(rb'"body":"bench (\d+) (\d+) (\d+)"')
REF = re.compile(rb'"ref":"(\d+)"')
CODE = re.compile(rb'"code":"([a-z_]+)"')
ACK = b'"type":"ack"'
ERROR = b'"type":"error"'
CONNECT_CONCURRENCY = 20  # per process; daphne's listen backlog is 50


class Sock:
    __slots__ = ("ws", "room", "subscribed", "seen", "sent")

    def __init__(self, room, subscribed):
        self.ws = None
        self.room = room
        self.subscribed = subscribed
        self.seen: set[int] = set()
        self.sent: set[int] = set()


class Worker:
    def __init__(self, index: int):
        self.index = index
        self.socks: list[Sock] = []
        self.step = -1
        self.counter = 0
        self.heartbeat = None  # seconds, from `hello`
        self.pinger = None
        self.reset()

    def reset(self):
        self.delivery_ns = array.array("q")
        self.ack_ns = array.array("q")
        self.pending: dict[int, tuple[int, Sock]] = {}
        self.acked: dict[int, list[int]] = {}
        self.errors: Counter = Counter()
        self.deliveries = 0
        self.stale = 0
        self.sent = 0
        self.first_send = 0
        self.last_send = 0
        self.last_receipt = 0
        self.last_ack = 0
        for sock in self.socks:
            sock.seen = set()
            sock.sent = set()

    # --- the hot path ------------------------------------------------------------------------
    def handler(self, sock: Sock):
        monotonic_ns = time.monotonic_ns
        body_search = BODY.search

        def on_text(payload: bytes):
            now = monotonic_ns()
            if ACK in payload:
                ref = REF.search(payload)
                if ref is not None:
                    n = int(ref[1])
                    entry = self.pending.pop(n, None)
                    if entry is not None:
                        self.ack_ns.append(now - entry[0])
                        self.last_ack = now
                        self.acked.setdefault(entry[1].room, []).append(n)
                return
            match = body_search(payload)
            if match is not None:
                if int(match[1]) != self.step:
                    self.stale += 1
                    return
                self.delivery_ns.append(now - int(match[3]))
                sock.seen.add(int(match[2]))
                self.deliveries += 1
                self.last_receipt = now
                return
            if ERROR in payload:
                code = CODE.search(payload)
                self.errors[code[1].decode() if code else "?"] += 1
                ref = REF.search(payload)
                if ref is not None:
                    self.pending.pop(int(ref[1]), None)

        return on_text

    # --- commands ----------------------------------------------------------------------------
    async def connect(self, host, port, specs, deadline=None):
        """Open, authenticate (and subscribe) every socket; none is started after `deadline`
        (a time.time() value): those are reported as skipped."""
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
        errors: Counter = Counter()
        skipped = 0

        async def one(token, room, subscribe):
            nonlocal skipped
            sock = Sock(room, subscribe)
            async with gate:
                if deadline is not None and time.time() > deadline:
                    skipped += 1
                    return None
                inbox = Inbox()
                for attempt in range(3):
                    try:
                        ws = await connect(host, port, token=token, on_text=inbox)
                        hello = await inbox.expect(lambda m: m.get("type") == "hello")
                        self.heartbeat = hello.get("heartbeat") or self.heartbeat
                        if subscribe:
                            ws.send_text(b'{"type":"subscribe","ref":"s","room":%d}' % room)
                            await inbox.expect(lambda m: m.get("type") == "subscribed")
                        break
                    except Exception as exc:  # refused, reset, timed out: retry, then count
                        if attempt == 2:
                            errors[f"{type(exc).__name__}: {str(exc)[:80]}"] += 1
                            return None
                        await asyncio.sleep(0.5 + random.random())
            sock.ws = ws
            ws.on_text = self.handler(sock)
            self.socks.append(sock)  # pinged from now on, even while the others connect
            return sock

        if self.pinger is None:
            self.pinger = asyncio.get_running_loop().create_task(self._ping_forever())
        results = await asyncio.gather(*(one(*spec) for spec in specs))
        return {
            "connected": sum(s is not None for s in results),
            "skipped": skipped,
            "failed": sum(s is None for s in results) - skipped,
            "errors": dict(errors),
        }

    async def run(self, step, rate, duration):
        self.step = step
        self.reset()
        senders = [s for s in self.socks if s.ws.is_open]
        if rate <= 0 or duration <= 0 or not senders:
            return {"sent": 0}
        random.shuffle(senders)
        loop = asyncio.get_running_loop()
        total = int(rate * duration)
        base = (self.index + 1) * 10_000_000 + (self.counter % 1000) * 10_000
        self.counter += 1
        monotonic_ns = time.monotonic_ns
        uuid4 = uuid.uuid4
        start = loop.time()
        self.first_send = monotonic_ns()
        i = 0
        while i < total:
            due = min(total, int((loop.time() - start) * rate) + 1)
            while i < due:
                sock = senders[i % len(senders)]
                n = base + i
                now = monotonic_ns()
                sock.ws.send_text(
                    b'{"type":"message.send","ref":"%d","room":%d,"client_id":"%s",'
                    b'"body":"bench %d %d %d"}'
                    % (n, sock.room, str(uuid4()).encode(), step, n, now)
                )
                self.pending[n] = (now, sock)
                sock.sent.add(n)
                i += 1
            next_due = start + i / rate
            await asyncio.sleep(max(0.0, next_due - loop.time()))
        self.sent = total
        self.last_send = monotonic_ns()
        return {"sent": total}

    async def report(self, step, expected, wait):
        own = expected is None
        deadline = time.monotonic() + wait

        def missing():
            exp = self.acked if own else expected
            sets = {room: set(ids) for room, ids in exp.items()}
            owed = 0
            for sock in self.socks:
                if sock.subscribed:
                    owed += len(sets.get(sock.room, set()) - sock.sent - sock.seen)
            return owed

        while time.monotonic() < deadline and (self.pending or missing()):
            await asyncio.sleep(0.1)
        # One more beat: late frames past the last expected one (duplicates) are counted too.
        await asyncio.sleep(0.05)
        return {
            "sent": self.sent,
            "acked": {room: ids for room, ids in self.acked.items()},
            "unacked": len(self.pending),
            "errors": dict(self.errors),
            "deliveries": self.deliveries,
            "distinct": sum(len(s.seen) for s in self.socks),
            "stale": self.stale,
            "lost": missing(),
            "closed": sum(1 for s in self.socks if not s.ws.is_open),
            "close_codes": dict(Counter(s.ws.close_code for s in self.socks if not s.ws.is_open)),
            "delivery_ns": self.delivery_ns.tobytes(),
            "ack_ns": self.ack_ns.tobytes(),
            "first_send": self.first_send,
            "last_send": self.last_send,
            "last_receipt": self.last_receipt,
            "last_ack": self.last_ack,
            "cpu": time.process_time(),
        }

    async def ping(self, count):
        for _ in range(count):
            for sock in self.socks:
                sock.ws.send_text(b'{"type":"ping"}')
        return {
            "open": sum(1 for s in self.socks if s.ws.is_open),
            "close_codes": dict(Counter(s.ws.close_code for s in self.socks if not s.ws.is_open)),
        }

    async def _ping_forever(self):
        """Keep every socket alive as the web client does: a `ping` each heartbeat / 2,
        spread evenly (a few sockets per tick) so the server sees a steady trickle."""
        tick, i = 0.25, 0
        while True:
            await asyncio.sleep(tick)
            socks = self.socks
            if not socks or not self.heartbeat:
                continue
            share = max(1, round(len(socks) * tick / (self.heartbeat / 2)))
            for _ in range(min(share, len(socks))):
                i = (i + 1) % len(socks)
                socks[i].ws.send_text(b'{"type":"ping"}')

    async def quit(self):
        for sock in self.socks:
            sock.ws.close()
        await asyncio.sleep(0.2)
        return {"closed": len(self.socks)}


def worker_main(conn, index: int) -> None:
    """Entry point of a worker process (multiprocessing, spawn)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass
    asyncio.run(_serve(conn, index))


async def _serve(conn, index):
    worker = Worker(index)
    loop = asyncio.get_running_loop()
    while True:
        command = await loop.run_in_executor(None, conn.recv)
        name, args = command[0], command[1:]
        try:
            reply = await getattr(worker, name)(*args)
        except Exception as exc:
            reply = {"exception": f"{type(exc).__name__}: {exc}"}
        conn.send(reply)
        if name == "quit":
            return


class Pool:
    """Worker processes and the pipes to them."""

    def __init__(self, count: int):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.conns, self.procs = [], []
        for index in range(count):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(child, index), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)

    def call(self, indexes, *command, timeout: float = 180.0) -> list[dict]:
        """Send one command to the given workers (all at once), collect their replies in order."""
        return self.call_each({i: command for i in indexes}, timeout=timeout)

    def call_each(self, commands: dict, timeout: float = 180.0) -> list[dict]:
        """Send each worker its own command (all at once), collect the replies in order."""
        for i, command in commands.items():
            self.conns[i].send(command)
        replies = []
        for i, command in commands.items():
            if not self.conns[i].poll(timeout):
                raise TimeoutError(f"worker {i} did not answer {command[0]} in {timeout}s")
            reply = self.conns[i].recv()
            if "exception" in reply:
                raise RuntimeError(f"worker {i}: {reply['exception']}")
            replies.append(reply)
        return replies

    def cpu_seconds(self) -> float:
        from bench.stack import cpu_seconds

        total = 0.0
        for proc in self.procs:
            try:
                total += cpu_seconds(proc.pid)
            except OSError:
                pass
        return total

    def close(self):
        for i, proc in enumerate(self.procs):
            if proc.is_alive():
                try:
                    self.call([i], "quit", timeout=10)
                except Exception:
                    pass
            proc.join(5)
            if proc.is_alive():
                proc.kill()


def split(items: list, parts: int) -> list[list]:
    """items dealt round-robin into `parts` lists."""
    return [items[i::parts] for i in range(parts)]


def ladder_arguments(parser) -> None:
    """Options every rate-ladder benchmark takes."""
    from pathlib import Path

    parser.add_argument("--full", action="store_true", help="do not stop at the first miss")
    parser.add_argument(
        "--profile",
        type=float,
        metavar="RATE",
        help="py-spy the server during the step at this rate",
    )
    parser.add_argument(
        "--wall",
        action="store_true",
        help="profile every thread, waiting included (default: GIL holder)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra server environment for an experiment (e.g. CHAT_DB_THREADS=4,"
        " BENCH_SWITCH_INTERVAL=0.0005); recorded with the results",
    )
