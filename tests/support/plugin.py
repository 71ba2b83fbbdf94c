"""The test run's environment, set before pytest-django loads the settings (pytest.ini loads
this plugin with `-p tests.support.plugin`; chatproject/settings_test.py only overrides values).

The suite runs against real services: local PostgreSQL and Redis, and a private
Kafka-compatible broker started for the session (services.configure_environment). Each run gets
its own test database, Redis prefix, Celery queue, topic prefix and SQLite file, named after
CHAT_TEST_RUN_ID; child processes (servers, workers) inherit them through the environment.
"""

from __future__ import annotations

import os

import pytest

from . import services


def configure_run() -> None:
    services.configure_environment()
    run_id = os.environ.setdefault("CHAT_TEST_RUN_ID", str(os.getpid()))
    os.environ.setdefault("CHANNELS_PREFIX", f"chattest{run_id}")
    os.environ.setdefault("CELERY_QUEUE", f"chattest{run_id}")
    os.environ.setdefault("KAFKA_TOPIC_PREFIX", f"chattest{run_id}")
    os.environ.setdefault("DATABASE_TEST_NAME", f"test_chat_{run_id}")
    os.environ.setdefault("SQLITE_PATH", f"/tmp/chat-test-{run_id}.sqlite3")
    os.environ.setdefault("UPLOAD_ROOT", f"/tmp/chat-test-uploads-{run_id}")


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(early_config, parser, args):
    # A wrapper runs before every implementation, pytest-django's (which loads the settings)
    # included.
    configure_run()
    return (yield)
