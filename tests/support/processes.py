"""Child processes for tests: ASGI servers and Celery workers on the test database."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import time

from .services import PYTHON, ROOT, free_port, wait_port


def subprocess_env(**overrides) -> dict:
    """The environment for a child process that must use this test run's database and prefixes."""
    from django.conf import settings
    from django.db import connection

    env = dict(os.environ)
    db = connection.settings_dict
    env["DJANGO_SETTINGS_MODULE"] = "chatproject.settings"
    env.pop("DATABASE_TEST_NAME", None)
    if db["ENGINE"].endswith("postgresql"):
        user = db.get("USER") or "postgres"
        host = db.get("HOST") or "127.0.0.1"
        port = db.get("PORT") or 5432
        env["DATABASE_URL"] = f"postgres://{user}@{host}:{port}/{db['NAME']}"
    else:
        env.pop("DATABASE_URL", None)
        env["SQLITE_PATH"] = str(db["NAME"])
    env["CHANNELS_PREFIX"] = settings.CHANNELS_PREFIX
    env["CELERY_QUEUE"] = settings.CELERY_TASK_DEFAULT_QUEUE
    env["KAFKA_TOPIC_PREFIX"] = settings.KAFKA_TOPIC_PREFIX
    env["KAFKA_BOOTSTRAP_SERVERS"] = ",".join(settings.KAFKA_BOOTSTRAP_SERVERS)
    if settings.REDIS_URL:
        env["REDIS_URL"] = settings.REDIS_URL
    env["ALLOWED_HOSTS"] = "localhost,127.0.0.1,testserver"
    env["PYTHONUNBUFFERED"] = "1"
    env.update({k: str(v) for k, v in overrides.items()})
    return env


class ChildProcess:
    name = "process"

    def __init__(self, args, env):
        self.args = args
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.log = tempfile.NamedTemporaryFile(prefix=f"{self.name}-", suffix=".log", delete=False)

    def start(self):
        self.proc = subprocess.Popen(
            self.args,
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def output(self) -> str:
        with open(self.log.name, errors="replace") as handle:
            return handle.read()

    def signal(self, sig) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL, no clean-up: the way a crash looks."""
        self.signal(signal.SIGKILL)
        if self.proc:
            self.proc.wait(10)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class ServerProcess(ChildProcess):
    """The ASGI app under daphne, as production runs it."""

    name = "server"

    def __init__(self, env, port: int | None = None, workers: int = 1):
        """One process unless `workers` says more (then a supervisor and its children on one
        port: chatproject.workers); the tests that look at one process's memory, signals or
        death need exactly one."""
        self.port = port or free_port()
        super().__init__(
            [
                PYTHON,
                "-m",
                "chatproject.serve",
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                str(workers),
            ],
            env,
        )

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/"

    def start(self, timeout: float = 30.0):
        super().start()
        wait_port("127.0.0.1", self.port, timeout=timeout, proc=self.proc)
        if "--workers" in self.args and self.args[self.args.index("--workers") + 1] != "1":
            # The supervisor's socket listens at once; wait until a worker answers on it.
            self.wait_healthy(timeout * 2)
        return self

    def wait_healthy(self, timeout: float) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.http_url}/healthz", timeout=5) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                if time.monotonic() > deadline or not self.alive():
                    raise
            time.sleep(0.2)


class CeleryWorker(ChildProcess):
    """A real Celery worker consuming this test run's queue (with beat when asked)."""

    name = "celery"

    def __init__(self, env, *, beat: bool = False, concurrency: int = 1):
        args = [
            PYTHON,
            "-m",
            "celery",
            "-A",
            "chatproject",
            "worker",
            "-Q",
            env["CELERY_QUEUE"],
            "-c",
            str(concurrency),
            "--loglevel",
            "INFO",
            "-n",
            f"test-{os.getpid()}-{time.monotonic_ns()}@%h",
        ]
        if beat:
            args += ["-B", "-s", tempfile.mktemp(prefix="celerybeat-")]
        super().__init__(args, env)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "ready." in self.output():
                return
            if not self.alive():
                raise RuntimeError("celery worker exited:\n" + self.output()[-3000:])
            time.sleep(0.1)
        raise TimeoutError("celery worker not ready:\n" + self.output()[-3000:])


# --- What a server logged --------------------------------------------------------------------

RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ([A-Z]+) ")


def unhandled_errors(output: str) -> list[str]:
    """Error records, and tracebacks not attached to a WARNING/INFO record, in a server log.

    A handled failure logs a WARNING with its traceback (Redis busy, say); an unhandled one
    shows as an ERROR/CRITICAL record ("Exception inside application", logger.exception) or
    as a bare traceback.
    """
    found, level = [], None
    for line in output.splitlines():
        match = RECORD.match(line)
        if match:
            level = match.group(1)
            if level in ("ERROR", "CRITICAL"):
                found.append(line)
        elif line.startswith("Traceback") and level not in ("WARNING", "INFO", "DEBUG"):
            found.append(line)
    return found


def metric(proc, name: str) -> float:
    """A sample of the server's /metrics (a series without labels), 0.0 when absent."""
    import urllib.request

    with urllib.request.urlopen(f"{proc.http_url}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
    return 0.0


def assert_clean_log(proc) -> None:
    """The server logged no unhandled exception."""
    output = proc.output()
    assert not unhandled_errors(output), output[-4000:]
