"""Request/connection ids in logs, JSON log lines, and Prometheus metrics.

Metrics work across several server and worker processes through prometheus_client's
multiprocess mode when PROMETHEUS_MULTIPROC_DIR is set (bin/run sets it).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
import uuid

from prometheus_client import Counter, Gauge, Histogram

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
connection_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("connection_id", default="-")

# Never let a secret reach a log line, whatever a caller formats into it.
_SECRET_PATTERNS = [
    re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?\s*(?:token|bearer)\s+)[A-Za-z0-9._\-]+"),
    re.compile(r"(?i)((?:password|token|secret|sessionid|csrftoken)[\"']?\s*[:=]\s*[\"']?)[^\s\"',;&]+"),
]


def redact(text: str) -> str:
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(r"\1[redacted]", text)
    return text


class ContextFilter(logging.Filter):
    def filter(self, record):
        record.request_id = request_id_var.get()
        record.connection_id = connection_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record):
        entry = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
            "request_id": getattr(record, "request_id", "-"),
            "connection_id": getattr(record, "connection_id", "-"),
        }
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


# --- Metrics (every capability registers its own here, so names stay in one place) ------------
HTTP_REQUESTS = Counter(
    "chat_http_requests_total", "HTTP requests", ["method", "view", "status"]
)
HTTP_LATENCY = Histogram(
    "chat_http_request_seconds", "HTTP request latency", ["method", "view"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
WS_OPEN_SOCKETS = Gauge(
    "chat_ws_open_sockets", "Open WebSocket connections", multiprocess_mode="livesum"
)
WS_SUBSCRIPTIONS = Gauge(
    "chat_ws_subscriptions", "Room subscriptions on open sockets", multiprocess_mode="livesum"
)
WS_EVENTS_DELIVERED = Counter(
    "chat_ws_events_delivered_total", "Events sent to sockets", ["type"]
)
WS_ERRORS = Counter("chat_ws_errors_total", "Error frames sent, by code", ["code"])
FANOUT_LATENCY = Histogram(
    "chat_fanout_latency_seconds", "From event commit time to hand-off to a local socket",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
SEND_BATCH_SIZE = Histogram(
    "chat_send_batch_size", "WebSocket sends committed in one transaction (group commit)",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200),
)
SEND_BATCH_SECONDS = Histogram(
    "chat_send_batch_seconds", "Time of one group-commit transaction, thread hop included",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
OUTBOX_PENDING = Gauge(
    "chat_outbox_pending", "Unpublished outbox rows (last sweep)", multiprocess_mode="max"
)
OUTBOX_LAG = Gauge(
    "chat_outbox_lag_seconds", "Age of the oldest unpublished event (last sweep)",
    multiprocess_mode="max",
)
KAFKA_PUBLISH_LATENCY = Histogram(
    "chat_kafka_publish_seconds", "Time for a batch to be acknowledged by Kafka",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
KAFKA_PUBLISHED = Counter("chat_kafka_published_total", "Events acknowledged by Kafka", ["type"])
KAFKA_PUBLISH_ERRORS = Counter("chat_kafka_publish_errors_total", "Failed publish attempts")
CONSUMER_LAG = Gauge(
    "chat_kafka_consumer_lag", "Messages behind the end of the partition", ["group", "partition"],
    multiprocess_mode="max",
)
CONSUMER_HANDLED = Counter(
    "chat_kafka_consumer_handled_total", "Events handled by consume_events", ["group", "result"]
)


class RequestIdMiddleware:
    """Gives each request an id (or keeps a sane X-Request-ID) for its log lines."""

    _valid = re.compile(r"^[A-Za-z0-9\-_.]{1,64}$")

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        incoming = request.headers.get("X-Request-ID", "")
        rid = incoming if self._valid.match(incoming) else uuid.uuid4().hex
        token = request_id_var.set(rid)
        try:
            response = self.get_response(request)
        finally:
            request_id_var.reset(token)
        response["X-Request-ID"] = rid
        return response


class MetricsMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        start = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        view = match.view_name if match and match.view_name else "unmatched"
        HTTP_REQUESTS.labels(request.method, view, str(response.status_code)).inc()
        HTTP_LATENCY.labels(request.method, view).observe(time.perf_counter() - start)
        return response
