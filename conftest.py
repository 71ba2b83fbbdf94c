"""Test environment set-up lives in chatproject/settings_test.py (it must run before Django's
settings load): local PostgreSQL and Redis, and a private Kafka-compatible broker per session."""
