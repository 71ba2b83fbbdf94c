"""The spine: health, readiness, metrics, logging, production guards, the run command."""

import json
import logging
import os
import signal
import subprocess
import tempfile
import time
import urllib.request

import pytest
from django.test import override_settings

from apps.events.observability import JsonFormatter, redact
from tests.support.processes import ServerProcess
from tests.support.services import PYTHON, ROOT, free_port, wait_port

PRODUCTION_ENV = {
    "CHAT_ENV": "production",
    "SECRET_KEY": "k" * 20 + "-production-secret-for-tests-0123456789abcdef",
    "DEBUG": "false",
    "ALLOWED_HOSTS": "chat.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://chat.example.com",
}


def _manage(*args, env_overrides=None, timeout=120):
    env = dict(os.environ)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.update(env_overrides or {})
    return subprocess.run(
        [PYTHON, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _get(url, headers=None, timeout=10):
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.mark.django_db
def test_healthz_answers_without_touching_services(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
@pytest.mark.services
def test_readyz_is_ok_when_database_redis_and_kafka_answer(client):
    response = client.get("/readyz")
    body = response.json()
    assert response.status_code == 200, body
    assert body["down"] == []
    assert body["checks"]["database"]["backend"] == "postgresql"
    assert body["checks"]["redis"]["backend"] == "redis"
    assert body["checks"]["kafka"]["backend"] == "kafka"
    assert "pending" in body["checks"]["outbox"]


@pytest.mark.django_db
def test_readyz_names_what_is_down(client):
    dead = f"127.0.0.1:{free_port()}"
    with override_settings(REDIS_URL=f"redis://{dead}/0", KAFKA_BOOTSTRAP_SERVERS=[dead]):
        response = client.get("/readyz")
    body = response.json()
    assert response.status_code == 503
    assert body["status"] == "unavailable"
    assert set(body["down"]) == {"redis", "kafka"}
    assert body["checks"]["database"]["ok"] is True


@pytest.mark.django_db
def test_metrics_are_refused_outside_the_allowed_addresses(client):
    with override_settings(METRICS_ALLOWED_IPS=["10.9.9.9"], METRICS_TOKEN=None):
        assert client.get("/metrics").status_code == 403


@pytest.mark.django_db
def test_metrics_accept_the_bearer_token_and_count_requests(client):
    client.get("/healthz")
    with override_settings(METRICS_ALLOWED_IPS=[], METRICS_TOKEN="s3cret-metrics"):
        assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
        response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-metrics")
    assert response.status_code == 200
    text = response.content.decode()
    assert 'chat_http_requests_total{method="GET",status="200",view="healthz"}' in text


@pytest.mark.django_db(transaction=True)
def test_metrics_add_up_across_server_processes(child_env):
    metrics_dir = tempfile.mkdtemp(prefix="prom-")
    env = dict(child_env, PROMETHEUS_MULTIPROC_DIR=metrics_dir)
    servers = [ServerProcess(env).start(), ServerProcess(env).start()]
    try:
        for server, hits in zip(servers, (3, 4), strict=True):
            for _ in range(hits):
                assert _get(server.http_url + "/healthz")[0] == 200
        status, text = _get(servers[0].http_url + "/metrics")
        assert status == 200
        line = next(
            line
            for line in text.splitlines()
            if line.startswith("chat_http_requests_total{") and 'view="healthz"' in line
        )
        assert float(line.rsplit(" ", 1)[1]) == 7.0
    finally:
        for server in servers:
            server.stop()


def test_json_log_lines_carry_ids_and_never_secrets():
    formatter = JsonFormatter()
    record = logging.LogRecord(
        "chat",
        logging.INFO,
        __file__,
        1,
        "login with password=hunter2 and Authorization: Token abcdef0123456789",
        None,
        None,
    )
    record.request_id = "req-1"
    record.connection_id = "conn-9"
    entry = json.loads(formatter.format(record))
    assert entry["request_id"] == "req-1"
    assert entry["connection_id"] == "conn-9"
    assert "hunter2" not in entry["message"]
    assert "abcdef0123456789" not in entry["message"]
    assert redact("token=abc123") == "token=[redacted]"


def test_production_refuses_the_default_secret_key_with_a_clear_message():
    env = {"CHAT_ENV": "production", "SECRET_KEY": "", "DEBUG": ""}
    result = _manage("check", env_overrides=env)
    assert result.returncode == 2
    assert "Refusing to start in production" in result.stderr
    assert "SECRET_KEY" in result.stderr
    assert "Traceback" not in result.stderr


def test_production_refuses_debug_on():
    result = _manage("check", env_overrides=dict(PRODUCTION_ENV, DEBUG="true"))
    assert result.returncode == 2
    assert "DEBUG is on" in result.stderr


def test_check_deploy_reports_nothing_with_production_settings():
    result = _manage("check", "--deploy", "--fail-level", "WARNING", env_overrides=PRODUCTION_ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


@pytest.mark.django_db
def test_no_model_change_lacks_a_migration():
    result = _manage("makemigrations", "--check", "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_run_command_serves_on_embedded_defaults_and_stops_cleanly(tmp_path):
    """The README's run command with no services configured: SQLite, in-memory layer."""
    port, kafka_port = free_port(), free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in {
            "DATABASE_URL",
            "REDIS_URL",
            "KAFKA_BOOTSTRAP_SERVERS",
            "DJANGO_SETTINGS_MODULE",
            "CHANNELS_PREFIX",
            "CELERY_QUEUE",
            "KAFKA_TOPIC_PREFIX",
            "DATABASE_TEST_NAME",
            "SQLITE_PATH",
            "PROMETHEUS_MULTIPROC_DIR",
        }
    }
    env.update(PORT=str(port), KAFKA_PORT=str(kafka_port), CHAT_VAR_DIR=str(tmp_path))
    proc = subprocess.Popen(
        ["bash", "bin/run"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        wait_port("127.0.0.1", port, timeout=120, proc=proc)
        assert _get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        deadline = time.monotonic() + 30
        while True:
            status, body = _get(f"http://127.0.0.1:{port}/readyz")
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert status == 200, body
        checks = json.loads(body)["checks"]
        assert checks["database"]["embedded"] is True
        assert checks["redis"]["embedded"] is True
        assert checks["kafka"]["bootstrap"] == f"127.0.0.1:{kafka_port}"
    finally:
        os.killpg(proc.pid, signal.SIGINT) if proc.poll() is None else None
        try:
            output, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
    assert "Demo accounts" in output
    assert proc.returncode == 0, output[-3000:]
    # Nothing it started is left behind.
    leftovers = subprocess.run(
        ["pgrep", "-f", f"--port {port}|127.0.0.1:{kafka_port}|{tmp_path}"],
        capture_output=True,
        text=True,
    ).stdout.split()
    assert leftovers == [], leftovers


@pytest.mark.django_db
def test_health_probes_by_ip_pass_host_validation_and_https_redirect(client):
    with override_settings(ALLOWED_HOSTS=["chat.example.com"], SECURE_SSL_REDIRECT=True):
        assert client.get("/healthz", HTTP_HOST="10.0.0.7:8000").status_code == 200
        assert client.get("/api/me/", HTTP_HOST="10.0.0.7:8000").status_code == 400
