"""Test overrides. Each test run gets its own database, Redis prefix, Celery queue and topic."""

import os

# Point the suite at the real services (and start its private Kafka-compatible broker) before
# the base settings read the environment. pytest-django imports this module first thing.
from tests.support import services as _services

_services.configure_environment()

RUN_ID = os.environ.setdefault("CHAT_TEST_RUN_ID", str(os.getpid()))
os.environ.setdefault("CHANNELS_PREFIX", f"chattest{RUN_ID}")
os.environ.setdefault("CELERY_QUEUE", f"chattest{RUN_ID}")
os.environ.setdefault("KAFKA_TOPIC_PREFIX", f"chattest{RUN_ID}")
os.environ.setdefault("DATABASE_TEST_NAME", f"test_chat_{RUN_ID}")
os.environ.setdefault("SQLITE_PATH", f"/tmp/chat-test-{RUN_ID}.sqlite3")

from .settings import *  # noqa: E402,F401,F403
from .settings import ALLOWED_HOSTS, DATABASES  # noqa: E402

# Django's test client sends Host: testserver (no longer in the default ALLOWED_HOSTS).
ALLOWED_HOSTS = [*ALLOWED_HOSTS, "testserver"]

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
READYZ_OUTBOX_CACHE_SECONDS = 0  # in-process tests read the outbox they just wrote
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    DATABASES["default"]["TEST"] = {"NAME": os.environ["SQLITE_PATH"]}
