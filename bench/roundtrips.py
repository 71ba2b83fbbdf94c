"""Round-trip benchmark: what one send and one delete cost, counted rather than timed.

    .venv/bin/python -m bench.roundtrips                    # 50 subscribers, 200 of each
    .venv/bin/python -m bench.roundtrips --subscribers 50 --sends 200 --rate 50

Wall-clock figures drift with the machine's load; counts do not. The server process of the
stack (bench/stack.py) reaches PostgreSQL and Redis through two counting TCP proxies run in
this process, which see every byte it exchanges with them and count the **round trips** (the
client speaks again after the server answered: one wait for the network and the other side;
a pipeline whose first answers come back while the client still sends counts more than one),
the PostgreSQL **sync points** (Sync, Flush and simple Query messages: the times the code asks
for answers, whether or not they are there already; deterministic, whatever the load), the
**statements** executed (PostgreSQL extended-protocol Execute and simple Query messages; named
prepared statements are mapped back to their text) and the **commands** (Redis RESP arrays, by
name). CPU seconds come from /proc: the server process, the Celery worker (the outbox
publisher's share of each action) and the database backends of the bench database.

Each part is measured as a window of activity minus an idle window of the same sockets (the
hub's maintenance, heartbeats and presence cost something every second, sends or not), divided
by the acked actions:

- `serial send`: one socket sends, waits for its ack, sends again (so each batch of the group
  commit holds one send: a count independent of the load), while --subscribers sockets (two
  client processes) receive every message;
- `serial delete`: the same socket deletes those messages one at a time (`message.delete`);
- `rate send`: 10 senders at --rate msg/s in total, open loop, as bench.fanout does (batches
  then hold several sends: the count per batch is printed too; batch sizes depend on load).

Prints per action: PostgreSQL round trips and statements, Redis round trips and commands,
server CPU ms, and the top statements and commands. The same command runs on any checkout that
has bench/stack.py and bench/loadgen.py (copy this file there to compare two commits).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import struct
import sys
import threading
import time
from collections import Counter

import bench.stack as stack_module
from bench import stats
from bench.loadgen import Pool, split
from bench.stack import (
    ChatStack,
    cpu_seconds,
    machine,
    make_room,
    make_users,
    stop_cleanly_on_sigterm,
    tree_cpu_seconds,
)

SSL_REQUEST, GSSENC_REQUEST = 80877103, 80877104


# --- Counting proxies -------------------------------------------------------------------------------


class Counts:
    """What the proxies saw (updated on the proxy thread, read with snapshot())."""

    def __init__(self):
        self.lock = threading.Lock()
        self.figures: Counter = Counter()  # pg_rt, pg_stmt, redis_rt, redis_cmd, connections
        self.statements: Counter = Counter()  # statement text (shortened) -> executions
        self.commands: Counter = Counter()  # Redis command name -> calls

    def snapshot(self) -> tuple[Counter, Counter, Counter]:
        with self.lock:
            return Counter(self.figures), Counter(self.statements), Counter(self.commands)


def short_sql(sql: str) -> str:
    text = " ".join(sql.split())
    return text if len(text) <= 110 else text[:107] + "..."


class PgClientParser:
    """The frontend messages of one PostgreSQL connection: which statements it executes."""

    def __init__(self):
        self.buf = bytearray()
        self.prepared: dict[bytes, str] = {}
        self.portals: dict[bytes, str] = {}
        self.waits = 0  # Sync, Flush and Query messages: each makes the client wait for answers

    def feed(self, data: bytes) -> list[str]:
        self.buf += data
        executed, buf, pos = [], self.buf, 0
        while len(buf) - pos >= 5:
            kind = buf[pos]
            (length,) = struct.unpack_from("!i", buf, pos + 1)
            end = pos + 1 + length
            if end > len(buf):
                break
            body = bytes(buf[pos + 5 : end])
            pos = end
            if kind in (ord("Q"), ord("S"), ord("H")):
                self.waits += 1
            if kind == ord("Q"):
                executed.append(body.rstrip(b"\0").decode("utf-8", "replace"))
            elif kind == ord("P"):
                name, rest = body.split(b"\0", 1)
                self.prepared[name] = rest.split(b"\0", 1)[0].decode("utf-8", "replace")
            elif kind == ord("B"):
                portal, rest = body.split(b"\0", 1)
                self.portals[portal] = self.prepared.get(rest.split(b"\0", 1)[0], "?")
            elif kind == ord("E"):
                executed.append(self.portals.get(body.split(b"\0", 1)[0], "?"))
        del buf[:pos]
        return executed


class RedisClientParser:
    """The commands of one Redis connection (RESP arrays of bulk strings; inline commands)."""

    def __init__(self):
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[str]:
        self.buf += data
        names, buf, pos = [], self.buf, 0
        while pos < len(buf):
            if buf[pos] != ord("*"):  # inline command: one line
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    break
                line = bytes(buf[pos:end]).split()
                if line:
                    names.append(line[0].decode("latin-1").upper())
                pos = end + 2
                continue
            parsed = self._array(buf, pos)
            if parsed is None:
                break
            pos, name = parsed
            names.append(name)
        del buf[:pos]
        return names

    @staticmethod
    def _array(buf, pos):
        end = buf.find(b"\r\n", pos)
        if end < 0:
            return None
        count, pos, name = int(buf[pos + 1 : end]), end + 2, "?"
        for index in range(count):
            end = buf.find(b"\r\n", pos)
            if end < 0 or buf[pos] != ord("$"):
                return None
            size = int(buf[pos + 1 : end])
            start, stop = end + 2, end + 2 + size
            if stop + 2 > len(buf):
                return None
            if index == 0:
                name = bytes(buf[start:stop]).decode("latin-1").upper()
            pos = stop + 2
        return pos, name


class CountingProxy:
    """A TCP proxy to host:port on a spare local port, counting round trips and requests."""

    def __init__(self, kind: str, host: str, port: int, counts: Counts, loop):
        self.kind, self.host, self.port, self.counts, self.loop = kind, host, port, counts, loop
        self.listen_port = None

    async def start(self):
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.listen_port = server.sockets[0].getsockname()[1]
        self.server = server

    async def handle(self, reader, writer):
        upstream_writer = None
        try:
            if self.kind == "pg":
                first = await self._pg_startup(reader, writer)
                if first is None:
                    return
            else:
                first = b""
            up_reader, upstream_writer = await asyncio.open_connection(self.host, self.port)
            with self.counts.lock:
                self.counts.figures[f"{self.kind}_connections"] += 1
            state = {"server_spoke": True}
            parser = PgClientParser() if self.kind == "pg" else RedisClientParser()
            if first:
                upstream_writer.write(first)
            await asyncio.gather(
                self._client_to_server(reader, upstream_writer, parser, state),
                self._server_to_client(up_reader, writer, state),
            )
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        finally:
            for w in (writer, upstream_writer):
                if w is not None:
                    w.close()

    async def _pg_startup(self, reader, writer) -> bytes | None:
        """Answer SSL/GSS requests with 'N' here (so the stream stays readable); return the
        startup message to forward (or a cancel request)."""
        while True:
            head = await reader.readexactly(8)
            length, code = struct.unpack("!ii", head)
            rest = await reader.readexactly(length - 8)
            if code in (SSL_REQUEST, GSSENC_REQUEST):
                writer.write(b"N")
                await writer.drain()
                continue
            return head + rest

    async def _client_to_server(self, reader, upstream, parser, state):
        kind = self.kind
        while True:
            data = await reader.read(65536)
            if not data:
                upstream.close()
                return
            requests = parser.feed(data)
            with self.counts.lock:
                if kind == "pg":
                    self.counts.figures["pg_sync"] += parser.waits
                    parser.waits = 0
                if state["server_spoke"]:  # the client speaks again after an answer
                    self.counts.figures[f"{kind}_rt"] += 1
                state["server_spoke"] = False
                if requests:
                    self.counts.figures[f"{kind}_req"] += len(requests)
                    table = self.counts.statements if kind == "pg" else self.counts.commands
                    for request in requests:
                        table[short_sql(request) if kind == "pg" else request] += 1
            upstream.write(data)
            await upstream.drain()

    async def _server_to_client(self, reader, writer, state):
        while True:
            data = await reader.read(65536)
            if not data:
                writer.close()
                return
            state["server_spoke"] = True
            writer.write(data)
            await writer.drain()


class Proxies:
    """The PostgreSQL and Redis proxies on one thread of their own."""

    def __init__(self, pg=("127.0.0.1", 5432), redis=("127.0.0.1", 6379)):
        self.counts = Counts()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.pg = CountingProxy("pg", *pg, self.counts, self.loop)
        self.redis = CountingProxy("redis", *redis, self.counts, self.loop)
        for proxy in (self.pg, self.redis):
            asyncio.run_coroutine_threadsafe(proxy.start(), self.loop).result(10)

    def stop(self):
        async def shut():
            for proxy in (self.pg, self.redis):
                proxy.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shut(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


# --- The stack, its server behind the proxies ----------------------------------------------------------


def proxied_stack(proxies: Proxies, settings: dict) -> ChatStack:
    """A ChatStack whose server process (only) reaches PostgreSQL and Redis through the
    proxies; the worker, migrations and this process connect directly."""
    original = stack_module.ServerProcess

    def server_process(env, *args, **kwargs):
        db = env["DATABASE_URL"].rsplit("/", 1)[1]
        env = dict(
            env,
            DATABASE_URL=f"postgres://postgres@127.0.0.1:{proxies.pg.listen_port}/{db}",
            REDIS_URL=env["REDIS_URL"].replace(
                "127.0.0.1:6379", f"127.0.0.1:{proxies.redis.listen_port}"
            ),
        )
        return original(env, *args, **kwargs)

    stack_module.ServerProcess = server_process
    return ChatStack(settings=settings)


def backend_cpu_seconds(db_name: str) -> float:
    """CPU seconds so far of the PostgreSQL backends connected to the bench database (the
    server's and the worker's: the database's own work per action, on the same cores)."""
    import psycopg

    with psycopg.connect(stack_module.PG_ADMIN_URL, autocommit=True) as conn:
        pids = [
            row[0]
            for row in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s", [db_name]
            )
        ]
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except OSError:
            pass
    return total


class Window:
    """Counts and CPU seconds (server, worker, database backends) between start() and stop()."""

    def __init__(self, proxies: Proxies, stack: ChatStack):
        self.proxies, self.stack = proxies, stack

    def cpu(self) -> tuple[float, float, float]:
        worker = self.stack.worker
        return (
            cpu_seconds(self.stack.pid),
            tree_cpu_seconds(worker.proc.pid) if worker is not None else 0.0,
            backend_cpu_seconds(self.stack.db_name),
        )

    def start(self):
        self.t0, self.cpu0 = time.monotonic(), self.cpu()
        self.f0, self.s0, self.c0 = self.proxies.counts.snapshot()
        return self

    def stop(self):
        time.sleep(0.3)  # let the last answers pass the proxies
        f1, s1, c1 = self.proxies.counts.snapshot()
        self.wall = time.monotonic() - self.t0 - 0.3
        self.cpus = [b - a for a, b in zip(self.cpu0, self.cpu(), strict=True)]
        self.figures, self.statements, self.commands = f1 - self.f0, s1 - self.s0, c1 - self.c0
        return self


def per_action(active: Window, idle: Window, actions: int) -> dict:
    """The active window's counts less the idle window's (scaled to the same length), per
    action."""
    scale = active.wall / idle.wall if idle.wall else 0.0

    def net(a, b):
        return max(0.0, a - b * scale) / actions

    figures = {
        name: round(net(active.figures[name], idle.figures[name]), 2)
        for name in ("pg_rt", "pg_sync", "pg_req", "redis_rt", "redis_req")
    }
    for index, name in enumerate(("cpu_ms", "worker_cpu_ms", "db_cpu_ms")):
        figures[name] = round(1000 * net(active.cpus[index], idle.cpus[index]), 2)
    figures["top_sql"] = [
        (sql, round(net(n, idle.statements[sql]), 2))
        for sql, n in active.statements.most_common(12)
    ]
    figures["top_redis"] = [
        (cmd, round(net(n, idle.commands[cmd]), 2)) for cmd, n in active.commands.most_common(12)
    ]
    figures["actions"] = actions
    return figures


def line(name: str, f: dict, extra: str = "") -> str:
    return (
        f"{name:14} n {f['actions']:5}  pg round trips {f['pg_rt']:5} (syncs "
        f"{f['pg_sync']:5})  statements {f['pg_req']:5}  "
        f"redis round trips {f['redis_rt']:6}  commands {f['redis_req']:6}  "
        f"CPU ms: server {f['cpu_ms']:6} worker {f['worker_cpu_ms']:6} "
        f"database {f['db_cpu_ms']:6}{extra}"
    )


def details(f: dict) -> str:
    out = []
    if "ack" in f:  # wall-clock, so load-dependent (through the proxies: a little slower)
        out.append(
            f"    ack latency (frame to ack, one at a time): p50 {f['ack']['p50_ms']} "
            f"p99 {f['ack']['p99_ms']} max {f['ack']['max_ms']} ms"
        )
    out.append("    statements per action:")
    out += [f"      {n:6}  {sql}" for sql, n in f["top_sql"] if n >= 0.05]
    out.append(
        "    redis commands per action: "
        + ", ".join(f"{cmd} {n}" for cmd, n in f["top_redis"] if n >= 0.05)
    )
    return "\n".join(out)


# --- The serial socket ----------------------------------------------------------------------------------


async def serial(port: int, token: str, room: int, count: int, proxies, stack, idle_seconds):
    """One socket: an idle window, `count` sends one at a time, `count` deletes one at a time."""
    from bench.wsclient import Inbox, connect

    inbox = Inbox()
    ws = await connect("127.0.0.1", port, token=token, on_text=inbox)
    await inbox.expect(lambda m: m.get("type") == "hello")

    latencies: list[int] = []

    async def act(frame: dict, ref: str) -> dict:
        frame["ref"] = ref
        t0 = time.perf_counter_ns()
        ws.send_text(json.dumps(frame).encode())
        reply = await inbox.expect(
            lambda m: m.get("ref") == ref and m.get("type") in ("ack", "error")
        )
        latencies.append(time.perf_counter_ns() - t0)
        return reply

    async def sends(n, tag):
        ids = []
        for i in range(n):
            reply = await act(
                {
                    "type": "message.send",
                    "room": room,
                    "client_id": _uuid(),
                    "body": f"bench {tag} {i}",
                },
                f"{tag}{i}",
            )
            if reply["type"] != "ack":
                raise RuntimeError(f"send refused: {reply}")
            ids.append(reply["event"]["data"]["id"])
        return ids

    await sends(20, "warm")  # warm-up: prepared statements, pools, first-call imports
    idle = Window(proxies, stack).start()
    await asyncio.sleep(idle_seconds)
    idle.stop()
    window = Window(proxies, stack).start()
    latencies.clear()
    ids = await sends(count, "s")
    window.stop()
    send = dict(per_action(window, idle, count), ack=stats.latency_summary(latencies))
    window = Window(proxies, stack).start()
    latencies.clear()
    for i, pk in enumerate(ids):
        reply = await act({"type": "message.delete", "message": pk}, f"d{i}")
        if reply["type"] != "ack":
            raise RuntimeError(f"delete refused: {reply}")
    window.stop()
    delete = dict(per_action(window, idle, count), ack=stats.latency_summary(latencies))
    ws.close()
    return idle, send, delete


def _uuid() -> str:
    import uuid

    return str(uuid.uuid4())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", type=int, default=50)
    parser.add_argument("--sends", type=int, default=200, help="serial sends (and deletes)")
    parser.add_argument("--rate", type=float, default=50.0, help="open-loop rate (0: skip)")
    parser.add_argument("--duration", type=float, default=8.0, help="open-loop seconds")
    parser.add_argument("--idle", type=float, default=6.0, help="idle window seconds")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument(
        "--profile",
        metavar="PATH",
        help="py-spy the server (GIL samples) during the open-loop step into PATH",
    )
    args = parser.parse_args(argv)
    stop_cleanly_on_sigterm()
    print(
        f"# bench.roundtrips {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, "
        f"{machine()}; {args.subscribers} subscribers",
        flush=True,
    )
    proxies = Proxies()
    results = {}
    try:
        with proxied_stack(proxies, dict(kv.split("=", 1) for kv in args.set)) as stack:
            users = make_users(args.subscribers + 11, f"{stack.tag}u")
            room = make_room(users[0][0], [uid for uid, _ in users], "round trips")
            subs = [(token, room, True) for _, token in users[: args.subscribers]]
            senders = [(token, room, False) for _, token in users[args.subscribers : -1]]
            pool = Pool(3)
            try:
                commands = {0: ("connect", "127.0.0.1", stack.port, senders)}
                for i, part in zip((1, 2), split(subs, 2), strict=True):
                    commands[i] = ("connect", "127.0.0.1", stack.port, part)
                replies = pool.call_each(commands, timeout=180)
                if sum(r["failed"] for r in replies):
                    raise RuntimeError(f"sockets failed to connect: {replies}")
                pool.call([1, 2], "run", 1, 0, 0)
                idle, send, delete = asyncio.run(
                    serial(stack.port, users[-1][1], room, args.sends, proxies, stack, args.idle)
                )
                results["serial_send"], results["serial_delete"] = send, delete
                print(line("serial send", send))
                print(details(send))
                print(line("serial delete", delete))
                print(details(delete), flush=True)
                if args.rate > 0:
                    batches0 = stack.batch_figures()
                    profiler = None
                    if args.profile:
                        from bench.profile import Profiler

                        profiler = Profiler(stack.pid, args.duration, args.profile)
                    window = Window(proxies, stack).start()
                    pool.call([1, 2], "run", 2, 0, 0)
                    pool.call([0], "run", 2, args.rate, args.duration, timeout=args.duration + 60)
                    acked = sum(
                        len(ids)
                        for r in pool.call([0], "report", 2, None, 10, timeout=40)
                        for ids in r["acked"].values()
                    )
                    window.stop()
                    batches1 = stack.batch_figures()
                    batches = batches1["batches"] - batches0["batches"]
                    sends_in = batches1["sends"] - batches0["sends"]
                    rate = per_action(window, idle, max(1, acked))
                    per_batch = (
                        f"  ({batches:.0f} batches, {sends_in / batches:.2f} sends each: "
                        f"pg round trips per batch {rate['pg_rt'] * acked / batches:.2f})"
                        if batches
                        else ""
                    )
                    results["rate_send"] = dict(rate, batches=batches, rate=args.rate)
                    print(line(f"rate send {args.rate:g}/s", rate, per_batch))
                    print(details(rate), flush=True)
                    if profiler is not None and profiler.wait():
                        from bench.profile import top

                        print(top(profiler.path, 25))
            finally:
                pool.close()
    finally:
        proxies.stop()
    print(f"# done, load {', '.join(f'{x:.1f}' for x in __import__('os').getloadavg())}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
