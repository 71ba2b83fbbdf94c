import shutil

import pytest

from tests import factories
from tests.support import services
from tests.support.processes import CeleryWorker, ServerProcess, subprocess_env


def pytest_collection_modifyitems(config, items):
    if not services.embedded():
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL, Redis and the broker (CHAT_EMBEDDED=1)")
    for item in items:
        if "services" in item.keywords or "kafka" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _close_the_pool_before_the_test_database_is_dropped(django_db_setup, django_db_blocker):
    """The connection pool keeps idle connections to the test database; close it before
    pytest-django drops the database, or the drop fails and the database is left behind."""
    yield
    from django.db import connections

    for alias in connections:
        connection = connections[alias]
        if connection.vendor == "postgresql":
            # A connection a finished thread still holds (checked out of the pool, never
            # returned) would also block the drop: end the other sessions on our own test
            # database (every child process is stopped by now).
            with django_db_blocker.unblock(), connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
        close_pool = getattr(connection, "close_pool", None)
        if close_pool is not None:
            close_pool()


@pytest.fixture(scope="session", autouse=True)
def _remove_the_runs_uploads():
    """The files uploaded during the run live under its own UPLOAD_ROOT
    (chatproject/settings_test.py): removed when it ends."""
    yield
    from django.conf import settings

    if "chat-test-uploads-" in str(settings.UPLOAD_ROOT):
        shutil.rmtree(settings.UPLOAD_ROOT, ignore_errors=True)


@pytest.fixture(autouse=True)
def _fresh_local_cache():
    """A locmem cache (embedded mode) lives as long as the test process, so throttle counts
    would leak between tests whose rolled-back users share ids. Redis caches are never
    cleared here: that would flush a database other runs use."""
    from django.core.cache import caches

    from apps.users import ratelimit

    for cache in caches.all():
        if type(cache).__name__ == "LocMemCache":
            cache.clear()
    ratelimit._local_buckets.clear()  # the limiter's in-process buckets (embedded mode)
    ratelimit._sync_down_until = 0.0  # a test that made Redis unreachable leaves no backoff
    yield


@pytest.fixture
def user(db):
    return factories.make_user()


@pytest.fixture
def other_user(db):
    return factories.make_user()


@pytest.fixture
def room(db, user):
    return factories.make_room(user)


@pytest.fixture
def child_env(transactional_db):
    """Environment for child processes on this test's database."""
    return subprocess_env()


@pytest.fixture
def server(child_env):
    """A real daphne server process on a spare port."""
    proc = ServerProcess(child_env).start()
    yield proc
    proc.stop()


@pytest.fixture
def celery_worker(child_env):
    """A real Celery worker on this run's queue."""
    worker = CeleryWorker(child_env).start()
    worker.wait_ready()
    yield worker
    worker.stop()
