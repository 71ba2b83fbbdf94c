"""Several server processes on one port: `python -m chatproject.serve --workers N`.

The supervisor (this module) binds the listening socket once and starts N children,
`python -m chatproject.serve --fd FD`, each a complete server with its own hub and its own
database pool. Every child accepts on the same inherited socket, so the kernel gives each new
connection to one of them; they meet through Redis (the channel layer, presence, rights
versions), as separate hosts do. This is how gunicorn and uvicorn run several workers, and it
needs no SO_REUSEPORT: a child that dies cannot take the port with it, and the supervisor can
start its replacement on the same socket.

- The default is one worker per core the process may run on (`CHAT_WORKERS` overrides). With
  the in-memory channel layer (no REDIS_URL) the processes could not reach each other's
  sockets, so the default is then 1 and asking for more is refused.
- Prometheus metrics are aggregated over the workers: without PROMETHEUS_MULTIPROC_DIR the
  supervisor gives the children a private directory (removed at exit), and marks a dead
  child's live gauges dead.
- SIGTERM or SIGINT: the supervisor stops accepting (closes its copy of the socket) and passes
  SIGTERM to every child, which closes each of its WebSockets with 1012 and exits within
  CHAT_SHUTDOWN_GRACE_SECONDS; a child still alive 5 s after that is killed.
- A child that exits on its own is started again after a pause that doubles (1 s to 30 s) while
  children keep dying young; if every start of the first round dies within STARTUP_SECONDS the
  configuration is broken and the supervisor stops with exit code 1 instead of looping.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

logger = logging.getLogger("chatproject.workers")

STARTUP_SECONDS = 10.0  # a child that dies sooner than this died young
KILL_AFTER_GRACE_SECONDS = 5.0
MAX_BACKOFF_SECONDS = 30.0


class WorkersRefused(Exception):
    """A worker count that cannot work with these settings."""


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def in_memory_layer() -> bool:
    from django.conf import settings

    return "InMemory" in settings.CHANNEL_LAYERS["default"]["BACKEND"]


def worker_count(requested: str | int | None) -> int:
    """The number of server processes for `--workers` (None or "auto": CHAT_WORKERS, else one per
    core; 1 with the in-memory channel layer)."""
    requested = requested if requested not in (None, "") else os.environ.get("CHAT_WORKERS")
    local = in_memory_layer()
    if requested in (None, "", "auto"):
        return 1 if local else cores()
    try:
        count = int(requested)
    except (TypeError, ValueError):
        raise WorkersRefused(f"--workers must be a number or 'auto', not {requested!r}") from None
    if count < 1:
        raise WorkersRefused("--workers must be at least 1")
    if count > 1 and local:
        raise WorkersRefused(
            "several workers need the Redis channel layer (set REDIS_URL): with the in-memory "
            "layer one process could not deliver to another's sockets"
        )
    return count


def listening_socket(bind: str, port: int, backlog: int = 1024) -> socket.socket:
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    sock = socket.create_server((bind.strip("[]"), port), family=family, backlog=backlog)
    sock.set_inheritable(True)
    return sock


class Child:
    def __init__(self, index: int):
        self.index = index
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self.restart_at = 0.0
        self.young_deaths = 0


class Supervisor:
    def __init__(self, sock: socket.socket, count: int, *, grace: float, verbose_argv=()):
        self.sock = sock
        self.children = [Child(i) for i in range(count)]
        self.grace = grace
        self.argv = list(verbose_argv)
        self.stopping = False
        self.metrics_dir = None
        self.env = dict(os.environ)
        if count > 1 and not self.env.get("PROMETHEUS_MULTIPROC_DIR"):
            self.metrics_dir = tempfile.mkdtemp(prefix="chat-metrics-")
            self.env["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir

    def start(self, child: Child) -> None:
        fd = self.sock.fileno()
        env = dict(self.env, CHAT_WORKER_INDEX=str(child.index))
        child.proc = subprocess.Popen(
            [sys.executable, "-m", "chatproject.serve", "--fd", str(fd), *self.argv],
            env=env,
            pass_fds=(fd,),
        )
        child.started = time.monotonic()
        logger.info("worker %d started (pid %d)", child.index, child.proc.pid)

    def reap(self, child: Child) -> bool:
        """True when the child has exited (and its metrics are marked dead)."""
        if child.proc is None or child.proc.poll() is None:
            return False
        if self.env.get("PROMETHEUS_MULTIPROC_DIR"):
            try:
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(child.proc.pid, self.env["PROMETHEUS_MULTIPROC_DIR"])
            except Exception:  # metrics bookkeeping must not stop the supervisor
                logger.exception("could not mark worker %d's metrics dead", child.index)
        return True

    def stop(self, signum=None, frame=None) -> None:
        if self.stopping:
            return
        self.stopping = True
        logger.info("stopping %d workers", len(self.children))
        self.sock.close()  # no new connection waits in a queue nobody accepts from
        for child in self.children:
            if child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)

    def run(self) -> int:
        for child in self.children:
            self.start(child)
        first_round = True
        status = 0
        while not self.stopping:
            time.sleep(0.1)
            now = time.monotonic()
            for child in self.children:
                if child.proc is not None and self.reap(child) and not self.stopping:
                    lived = now - child.started
                    code = child.proc.returncode
                    child.proc = None
                    child.young_deaths = child.young_deaths + 1 if lived < STARTUP_SECONDS else 0
                    delay = min(MAX_BACKOFF_SECONDS, 2 ** max(0, child.young_deaths - 1))
                    child.restart_at = now + delay
                    logger.error(
                        "worker %d exited (code %s after %.1f s); restarting it in %d s",
                        child.index,
                        code,
                        lived,
                        delay,
                    )
                if child.proc is None and not self.stopping and now >= child.restart_at:
                    self.start(child)
            if first_round:
                if all(c.young_deaths for c in self.children):
                    logger.critical("every worker died at start-up; giving up")
                    status = 1
                    self.stop()
                elif all(now - c.started >= STARTUP_SECONDS for c in self.children):
                    first_round = False
        return self.wait(status)

    def wait(self, status: int) -> int:
        deadline = time.monotonic() + self.grace + KILL_AFTER_GRACE_SECONDS
        for child in self.children:
            if child.proc is None:
                continue
            try:
                child.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("worker %d still alive after the grace; killing it", child.index)
                child.proc.kill()
                child.proc.wait()
            self.reap(child)
        if self.metrics_dir:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
        return status


def supervise(bind: str, port: int, count: int, *, grace: float, child_argv=()) -> int:
    sock = listening_socket(bind, port)
    supervisor = Supervisor(sock, count, grace=grace, verbose_argv=child_argv)
    signal.signal(signal.SIGTERM, supervisor.stop)
    signal.signal(signal.SIGINT, supervisor.stop)
    logger.info("serving on %s:%s with %d workers", bind, port, count)
    return supervisor.run()
