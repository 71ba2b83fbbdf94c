"""Kafka plumbing shared by the publisher, the consumers and the topic command."""

from __future__ import annotations

import logging
import time

from django.conf import settings

logger = logging.getLogger(__name__)


def client_config() -> dict:
    return {
        "bootstrap_servers": settings.KAFKA_BOOTSTRAP_SERVERS,
        "security_protocol": settings.KAFKA_SECURITY_PROTOCOL,
        "request_timeout_ms": settings.KAFKA_REQUEST_TIMEOUT_MS,
    }


def ensure_topics(*, wait_seconds: float = 0.0) -> list[str]:
    """Create the events topic with the configured partitions if it does not exist."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaConnectionError, KafkaTimeoutError, TopicAlreadyExistsError

    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            admin = KafkaAdminClient(client_id="chat-admin", **client_config())
            break
        except (KafkaTimeoutError, KafkaConnectionError):
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)
    created = []
    try:
        existing = set(admin.list_topics())
        topic = settings.KAFKA_EVENTS_TOPIC
        if topic not in existing:
            try:
                admin.create_topics(
                    [NewTopic(topic, settings.KAFKA_PARTITIONS, settings.KAFKA_REPLICATION_FACTOR)]
                )
                created.append(topic)
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()
    return created
