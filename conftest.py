"""The test environment is set by the pytest plugin tests/support/plugin.py (it must run before
Django's settings load): local PostgreSQL and Redis, and a private Kafka-compatible broker per
session. Fixtures live in tests/conftest.py."""
