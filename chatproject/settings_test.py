"""Test overrides of chatproject.settings: values only. The run's environment (real services,
the private broker, per-run database, prefixes and queue) is set before these settings load, by
the pytest plugin tests/support/plugin.py."""

from .settings import *  # noqa: F403
from .settings import ALLOWED_HOSTS, DATABASES

# Django's test client sends Host: testserver (no longer in the default ALLOWED_HOSTS).
ALLOWED_HOSTS = [*ALLOWED_HOSTS, "testserver"]

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
READYZ_OUTBOX_CACHE_SECONDS = 0  # in-process tests read the outbox they just wrote
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # The run's own file (SQLITE_PATH), not a shared in-memory database: child processes open it.
    DATABASES["default"]["TEST"] = {"NAME": DATABASES["default"]["NAME"]}
