"""What the machine allows, measured in the same run as a benchmark (issue 18): figures are
stated as ratios to these, because machines of one kind differ several-fold from day to day.

    .venv/bin/python -m bench.limits                     # all of them, printed
    .venv/bin/python -m bench.limits --clients 4 --seconds 10

- `pgbench_tps`: `pgbench -N` (simple updates, no branch-table contention) at the benchmark's
  client count against the same PostgreSQL, on a scratch database made and dropped here.
- `raw_send_rate`: an asyncio psycopg loop doing what one send does to the database (lock the
  room row, insert the message and its event, advance the room's seq), `batch` sends per
  transaction in one pipeline: the rate the database allows the send path, with no Python chat
  code in the way.
- `redis_publish_rate`: `redis-benchmark` PUBLISH against the same Redis.
- `CommitProbe`: during a step, one tiny INSERT and COMMIT every 50 ms on its own connection
  to the same PostgreSQL: how long the cluster's durable commit (its WAL flush) took while the
  step ran. A send is acked only once its batch committed, so a commit the disk held for
  250 ms holds every ack queued behind it; the probe's max beside a step's ack p99 tells that
  from the server's own delays.
- `SystemCpu`: CPU seconds of every process that takes part (server processes and their
  children, the Celery worker, PostgreSQL's backends, redis-server, the broker), from /proc,
  so a step can print CPU per acked send and per delivery.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import shutil
import subprocess
import time
import uuid

from bench.stack import tree_pids, url_with_database

PG_ADMIN = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _pg_parts(url: str) -> dict:
    match = re.match(
        r"postgres(?:ql)?://(?P<user>[^@/:]+)?@?(?P<host>[^:/]+):?(?P<port>\d+)?/"
        r"(?P<db>[^?]+)",
        url,
    )
    if not match:
        raise ValueError(f"not a PostgreSQL URL: {url}")
    parts = match.groupdict()
    parts["port"] = parts["port"] or "5432"
    parts["user"] = parts["user"] or "postgres"
    return parts


def _admin(sql: str, url: str = PG_ADMIN) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql)


def pgbench_tps(clients: int, seconds: float = 10.0, url: str = PG_ADMIN) -> float:
    """`pgbench -N -c clients` tps (without initial connection time) on a scratch database."""
    binary = shutil.which("pgbench")
    if not binary:
        raise RuntimeError("pgbench is not installed (Debian: postgresql-client)")
    parts = _pg_parts(url)
    db = f"pgbench_{os.getpid()}_{secrets.token_hex(2)}"
    _admin(f'CREATE DATABASE "{db}"', url)
    common = ["-h", parts["host"], "-p", parts["port"], "-U", parts["user"]]
    try:
        subprocess.run(
            [binary, "-i", "-q", "-s", "10", *common, db],
            check=True,
            capture_output=True,
            timeout=300,
        )
        done = subprocess.run(
            [
                binary,
                "-N",
                "-c",
                str(clients),
                "-j",
                str(min(clients, os.cpu_count() or 1)),
                "-T",
                str(int(seconds)),
                *common,
                db,
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=seconds + 120,
        )
        match = re.search(r"tps = ([\d.]+) \(without initial connection time\)", done.stdout)
        if not match:
            raise RuntimeError(f"unexpected pgbench output:\n{done.stdout[-1000:]}")
        return float(match.group(1))
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)', url)


RAW_SCHEMA = """
CREATE TABLE room (id int PRIMARY KEY, last_seq bigint NOT NULL DEFAULT 0,
                   last_activity timestamptz);
CREATE TABLE message (id bigserial PRIMARY KEY, room_id int NOT NULL REFERENCES room,
                      author_id int NOT NULL, body text NOT NULL, client_id uuid NOT NULL,
                      seq bigint NOT NULL, created_at timestamptz NOT NULL DEFAULT now(),
                      UNIQUE (author_id, client_id), UNIQUE (room_id, seq));
CREATE TABLE event (id uuid PRIMARY KEY, room_id int REFERENCES room, seq bigint,
                    type text NOT NULL, envelope jsonb NOT NULL, ts timestamptz NOT NULL,
                    message_id bigint, UNIQUE (room_id, seq));
CREATE TABLE outbox (event_id uuid PRIMARY KEY, room_id int, seq bigint, ts timestamptz NOT NULL);
CREATE INDEX outbox_order ON outbox (room_id, seq);
"""


async def _raw_lane(url, room_ids, batch, deadline, counts):
    import psycopg

    async with await psycopg.AsyncConnection.connect(url) as conn:
        envelope = '{"type": "message.created", "data": {"body": "%s"}}' % ("x" * 60)
        while time.monotonic() < deadline:
            for room in room_ids:
                async with conn.transaction(), conn.pipeline():
                    cur = await conn.execute(
                        "SELECT last_seq FROM room WHERE id = %s FOR NO KEY UPDATE", [room]
                    )
                    (seq,) = await cur.fetchone()
                    rows = [
                        (room, 1, "hello " + "x" * 60, uuid.uuid4(), seq + i + 1)
                        for i in range(batch)
                    ]
                    await conn.cursor().executemany(
                        "INSERT INTO message (room_id, author_id, body, client_id, seq) "
                        "VALUES (%s, %s, %s, %s, %s)",
                        rows,
                    )
                    events = [(uuid.uuid4(), room, s) for (_, _, _, _, s) in rows]
                    await conn.cursor().executemany(
                        "INSERT INTO event (id, room_id, seq, type, envelope, ts) "
                        "VALUES (%s, %s, %s, 'message.created', %s, now())",
                        [(*event, envelope) for event in events],
                    )
                    await conn.cursor().executemany(
                        "INSERT INTO outbox (event_id, room_id, seq, ts) VALUES (%s, %s, %s, now())",
                        events,
                    )
                    await conn.execute(
                        "UPDATE room SET last_seq = %s, last_activity = now() WHERE id = %s",
                        [seq + batch, room],
                    )
                counts[0] += batch
                if time.monotonic() >= deadline:
                    break


def raw_send_rate(
    *, lanes: int = 1, rooms: int = 100, batch: int = 10, seconds: float = 5.0, url: str = PG_ADMIN
) -> float:
    """Sends per second the database allows with the send path's statements, `batch` sends per
    transaction, `lanes` connections at once, rooms spread over the lanes."""
    db = f"rawsend_{os.getpid()}_{secrets.token_hex(2)}"
    _admin(f'CREATE DATABASE "{db}"', url)
    target = url_with_database(url, db)
    try:
        import psycopg

        with psycopg.connect(target, autocommit=True) as conn:
            conn.execute(RAW_SCHEMA)
            conn.execute("INSERT INTO room (id) SELECT g FROM generate_series(1, %s) g", [rooms])
        counts = [0]

        async def run():
            deadline = time.monotonic() + seconds
            shares = [list(range(1 + i, rooms + 1, lanes)) for i in range(lanes)]
            await asyncio.gather(
                *(_raw_lane(target, share, batch, deadline, counts) for share in shares)
            )

        started = time.monotonic()
        asyncio.run(run())
        return counts[0] / (time.monotonic() - started)
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)', url)


def redis_publish_rate(port: int = 6379, requests: int = 50000, clients: int = 4) -> float:
    """PUBLISH requests per second by redis-benchmark (no pipelining, as the channel layer)."""
    binary = shutil.which("redis-benchmark")
    if not binary:
        raise RuntimeError("redis-benchmark is not installed (Debian: redis-tools)")
    done = subprocess.run(
        [
            binary,
            "-p",
            str(port),
            "-q",
            "-n",
            str(requests),
            "-c",
            str(clients),
            "PUBLISH",
            f"bench-limits-{os.getpid()}",
            "x" * 200,
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    match = re.search(r"([\d.]+) requests per second", done.stdout)
    if not match:
        raise RuntimeError(f"unexpected redis-benchmark output: {done.stdout[-500:]}")
    return float(match.group(1))


# --- CPU of every process involved ------------------------------------------------------------


def _cpu(pid: int, children: bool = False) -> float:
    """utime + stime of a process (with `children`: plus its reaped children's)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def tree_cpu(pid: int) -> float:
    """A process tree's CPU, its exited (reaped) children included: PostgreSQL backends and
    Celery's pool processes come and go during a run."""
    return sum(_cpu(each, children=True) for each in tree_pids(pid))


def pids_named(name: str) -> list[int]:
    """Processes whose command name is `name` (postgres, redis-server, tansu) and whose parent
    is not one of them: the roots to sum trees from."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                text = handle.read()
        except OSError:
            continue
        comm = text[text.index("(") + 1 : text.rindex(")")]
        ppid = int(text.rsplit(")", 1)[1].split()[1])
        found[int(entry)] = (comm, ppid)
    return [
        pid
        for pid, (comm, ppid) in found.items()
        if comm == name and found.get(ppid, ("",))[0] != name
    ]


class CommitProbe:
    """`with CommitProbe(url) as probe:` ... `probe.summary()`: the latencies of small commits
    made every `interval` seconds on a thread of its own, while the block ran (see the module
    docstring). Its rows go to a table of its own in the given database (the benchmark's,
    dropped with it). A failed commit is counted, never raised."""

    def __init__(self, url: str, interval: float = 0.05):
        self.url, self.interval = url, interval
        self.latencies: list[float] = []
        self.failures = 0
        self.stopping = None
        self.thread = None

    def __enter__(self) -> CommitProbe:
        import threading

        import psycopg

        self.conn = psycopg.connect(self.url, autocommit=True)
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS bench_commit_probe (id bigserial PRIMARY KEY, "
            "at timestamptz NOT NULL DEFAULT now())"
        )
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="commit-probe", daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self.stopping.wait(self.interval):
            started = time.perf_counter()
            try:
                self.conn.execute("INSERT INTO bench_commit_probe DEFAULT VALUES")
            except Exception:  # noqa: BLE001 - a probe reports, it does not fail the run
                self.failures += 1
                continue
            self.latencies.append(time.perf_counter() - started)

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.thread.join()
        self.conn.close()

    def summary(self) -> dict:
        """{count, p50_ms, max_ms, failures} of the commits made."""
        ordered = sorted(self.latencies)
        if not ordered:
            return {"count": 0, "p50_ms": None, "max_ms": None, "failures": self.failures}
        return {
            "count": len(ordered),
            "p50_ms": round(ordered[len(ordered) // 2] * 1000, 2),
            "max_ms": round(ordered[-1] * 1000, 1),
            "failures": self.failures,
        }


def commit_note(probe: dict | None) -> str:
    """'  db commit p50 0.4 max 259.0 ms' for a step line (nothing without a probe)."""
    if not probe or not probe["count"]:
        return ""
    failed = f", {probe['failures']} failed" if probe["failures"] else ""
    return f"  db commit p50 {probe['p50_ms']} max {probe['max_ms']} ms{failed}"


class SystemCpu:
    """CPU seconds per role between two readings: `read()` returns {role: seconds so far}.

    Roles: the given pids' trees (server, worker, broker...) and, found by name, every
    PostgreSQL server (postmaster tree: all backends, this run's and others') and redis-server.
    On a shared machine the PostgreSQL and Redis figures include other users' load: the header
    of a run prints the load average beside them."""

    def __init__(self, services: bool = True, **roots: int | None):
        self.roots = {role: pid for role, pid in roots.items() if pid}
        if not services:  # the ceiling server uses neither PostgreSQL nor Redis
            return
        self.roots.update(
            {f"postgres{'' if i == 0 else i}": pid for i, pid in enumerate(pids_named("postgres"))}
        )
        self.roots.update(
            {f"redis{'' if i == 0 else i}": pid for i, pid in enumerate(pids_named("redis-server"))}
        )

    def read(self) -> dict[str, float]:
        return {role: tree_cpu(pid) for role, pid in self.roots.items()}

    @staticmethod
    def delta(before: dict, after: dict) -> dict[str, float]:
        return {role: after.get(role, 0.0) - before.get(role, 0.0) for role in after}


def machine_idle_seconds() -> float:
    """CPU seconds all cores together have spent idle (or in I/O wait) since boot, from
    /proc/stat; the machine's busy time over a step is cores x wall - idle. Read from the
    busy counters (user, system) instead, the ceiling server's steps came out up to a sixth
    of a core below the processes' own CPU time (bench/RESULTS.md, 3 December)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]
    return (ticks[3] + ticks[4]) / os.sysconf("SC_CLK_TCK")


def machine_summary(idle_seconds: float, wall: float, parts: dict[str, float]) -> dict:
    """The machine's busy share over a step (its idle seconds in the step, `wall` long) and
    each process's, in % of one core: beside the cores, what every process of the run (the
    load generator's too) left free, the machine's own limit."""
    cores = os.cpu_count() or 1
    shares = {role: round(100 * seconds / wall) for role, seconds in parts.items()}
    busy = round(100 * (cores * wall - idle_seconds) / wall)
    return {"cores": cores, "busy_pct": busy, "shares_pct": shares}


def machine_note(summary: dict | None) -> str:
    """'machine 172% of 200% busy (server 46, clients 39, postgres 41, ...; other 20)'."""
    if not summary:
        return ""
    shares = summary["shares_pct"]
    parts = ", ".join(
        f"{role} {pct}" for role, pct in sorted(shares.items(), key=lambda kv: -kv[1]) if pct > 0
    )
    other = summary["busy_pct"] - sum(shares.values())
    return (
        f"machine {summary['busy_pct']}% of {100 * summary['cores']}% busy ({parts}; other {other})"
    )


def per_unit_ms(delta: dict[str, float], units: int) -> str:
    """'total 0.84 ms (server 0.40, postgres 0.30, ...)' per unit (acked send, delivery)."""
    if units <= 0:
        return "n/a"
    total = sum(delta.values())
    parts = ", ".join(
        f"{role} {seconds * 1000 / units:.2f}"
        for role, seconds in sorted(delta.items(), key=lambda kv: -kv[1])
        if seconds > 0
    )
    return f"total {total * 1000 / units:.2f} ms ({parts})"


def header(clients: int, seconds: float = 10.0, url: str | None = None) -> dict:
    """The limits for a run's header: every figure measured now, one after the other (`url`:
    the cluster the run uses, if not the machine's)."""
    url = url or PG_ADMIN
    figures = {"pgbench_clients": clients}
    figures["pgbench_tps"] = pgbench_tps(clients, seconds, url=url)
    figures["raw_send_rate"] = raw_send_rate(lanes=1, seconds=seconds / 2, url=url)
    figures["redis_publish_rate"] = redis_publish_rate()
    return figures


def header_line(figures: dict) -> str:
    return (
        f"limits (same run): pgbench -N -c {figures['pgbench_clients']} "
        f"{figures['pgbench_tps']:,.0f} tps; raw send statements (1 lane, 10 per txn) "
        f"{figures['raw_send_rate']:,.0f} sends/s; redis-benchmark PUBLISH "
        f"{figures['redis_publish_rate']:,.0f}/s"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=4, help="pgbench clients")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    print(
        f"# bench.limits {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, "
        f"{os.cpu_count()} cores, load {', '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    print(header_line(header(args.clients, args.seconds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
