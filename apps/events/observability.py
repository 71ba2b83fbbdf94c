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
from http import HTTPStatus

from prometheus_client import Counter, Gauge, Histogram

from apps.core.errors import CODES

from .catalogue import CATALOGUE

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
connection_id_var: contextvars.ContextVar[str] = contextvars.ContextVar(
    "connection_id", default="-"
)

# Never let a secret reach a log line, whatever a caller formats into it.
_SECRET_PATTERNS = [
    re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?\s*(?:token|bearer)\s+)[A-Za-z0-9._\-]+"),
    re.compile(
        r"(?i)((?:password|token|secret|sessionid|csrftoken)[\"']?\s*[:=]\s*[\"']?)[^\s\"',;&]+"
    ),
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
#
# Every label value comes from a known set: a value outside it is counted as "other". Each
# label value is a series kept for the life of the process (and a file entry in multiprocess
# mode), so one a client can choose (an invented HTTP method, a status) grows /metrics without
# bound: 2,000 requests with made-up methods once took it from 41 KB to 3.2 MB.
OTHER = "other"
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
HTTP_STATUSES = frozenset(str(status.value) for status in HTTPStatus)
ERROR_CODES = frozenset(CODES)
EVENT_TYPES = frozenset(CATALOGUE)
# apps.events.handlers' results (not imported: this module loads with the logging settings,
# before the models), and the runner's own two.
CONSUMER_RESULTS = frozenset({"handled", "duplicate", "ignored", "invalid", "error"})


def status_label(code) -> str:
    """A registered HTTP status as itself, anything else as its class ("5xx")."""
    text = str(code)
    return text if text in HTTP_STATUSES else f"{text[:1]}xx"


def any_value(value) -> str:
    """For labels the operator sets (a consumer group, a partition number), not a client."""
    return str(value)


class Bounded:
    """A metric whose label values are kept to known sets (one per label, in order: a set, or
    a function mapping a value to a bounded one); anything else becomes "other"."""

    __slots__ = ("metric", "bounds")

    def __init__(self, metric, *bounds):
        self.metric = metric
        self.bounds = bounds

    def labels(self, *values):
        return self.metric.labels(
            *[
                bound(value) if callable(bound) else (value if value in bound else OTHER)
                for value, bound in zip(values, self.bounds, strict=True)
            ]
        )

    def __getattr__(self, name):
        return getattr(self.metric, name)


def view_label(request, default="unmatched") -> str:
    """The URLconf's name for the view (a fixed set: the routes), else `default`."""
    match = getattr(request, "resolver_match", None)
    return match.view_name if match and match.view_name else default


HTTP_REQUESTS = Bounded(
    Counter("chat_http_requests_total", "HTTP requests", ["method", "view", "status"]),
    HTTP_METHODS,
    any_value,
    status_label,
)
HTTP_LATENCY = Bounded(
    Histogram(
        "chat_http_request_seconds",
        "HTTP request latency",
        ["method", "view"],
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    ),
    HTTP_METHODS,
    any_value,
)


def observe_request(request, view: str, response, start: float) -> None:
    """Count one HTTP request under `view` (a route name, never a client-chosen string)."""
    HTTP_REQUESTS.labels(request.method, view, response.status_code).inc()
    HTTP_LATENCY.labels(request.method, view).observe(time.perf_counter() - start)


WS_OPEN_SOCKETS = Gauge(
    "chat_ws_open_sockets", "Open WebSocket connections", multiprocess_mode="livesum"
)
WS_SUBSCRIPTIONS = Gauge(
    "chat_ws_subscriptions", "Room subscriptions on open sockets", multiprocess_mode="livesum"
)
WS_EVENTS_DELIVERED = Bounded(
    Counter("chat_ws_events_delivered_total", "Events sent to sockets", ["type"]), EVENT_TYPES
)
WS_ERRORS = Bounded(
    Counter("chat_ws_errors_total", "Error frames sent, by code", ["code"]), ERROR_CODES
)
WS_SENDS_IN_REACTOR = Counter(
    "chat_ws_sends_in_reactor_total",
    "message.send frames queued straight from the reactor (no ASGI queue, no consumer task)",
)
FANOUT_LATENCY = Histogram(
    "chat_fanout_latency_seconds",
    "From event commit time to hand-off to a local socket",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
SEND_BATCH_SIZE = Histogram(
    "chat_send_batch_size",
    "WebSocket sends committed in one transaction (group commit)",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200),
)
SEND_BATCH_SECONDS = Histogram(
    "chat_send_batch_seconds",
    "Time of one group-commit transaction, thread hop included",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
OUTBOX_PENDING = Gauge(
    "chat_outbox_pending", "Unpublished outbox rows (last sweep)", multiprocess_mode="max"
)
OUTBOX_LAG = Gauge(
    "chat_outbox_lag_seconds",
    "Age of the oldest unpublished event (last sweep)",
    multiprocess_mode="max",
)
KAFKA_PUBLISH_LATENCY = Histogram(
    "chat_kafka_publish_seconds",
    "Time for a batch to be acknowledged by Kafka",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
KAFKA_PUBLISHED = Bounded(
    Counter("chat_kafka_published_total", "Events acknowledged by Kafka", ["type"]), EVENT_TYPES
)
KAFKA_PUBLISH_ERRORS = Counter("chat_kafka_publish_errors_total", "Failed publish attempts")
CONSUMER_LAG = Bounded(
    Gauge(
        "chat_kafka_consumer_lag",
        "Messages behind the end of the partition",
        ["group", "partition"],
        multiprocess_mode="max",
    ),
    any_value,
    any_value,
)
CONSUMER_HANDLED = Bounded(
    Counter(
        "chat_kafka_consumer_handled_total", "Events handled by consume_events", ["group", "result"]
    ),
    any_value,
    CONSUMER_RESULTS,
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
        observe_request(request, view_label(request), response, start)
        return response
