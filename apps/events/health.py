"""/healthz, /readyz and /metrics."""

from __future__ import annotations

import hmac
import os
import socket
import time

from django.conf import settings
from django.db import connection
from django.http import HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from apps.core.clientaddr import came_through_a_proxy

from .observability import observe_request
from .outbox import outbox_status


@require_GET
@never_cache
def healthz(request):
    """The process is alive and serving HTTP."""
    return JsonResponse({"status": "ok"})


def check_database() -> dict:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return {
            "ok": True,
            "backend": settings.DATABASE_BACKEND,
            "embedded": settings.DATABASE_BACKEND == "sqlite",
        }
    except Exception as exc:  # noqa: BLE001 - any failure means "down"
        return {"ok": False, "backend": settings.DATABASE_BACKEND, "error": type(exc).__name__}


def check_redis() -> dict:
    if not settings.REDIS_URL:
        return {"ok": True, "backend": "in-memory channel layer", "embedded": True}
    import redis

    try:
        client = redis.Redis.from_url(
            settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1
        )
        client.ping()
        client.close()
        return {"ok": True, "backend": "redis", "embedded": False}
    except Exception as exc:  # noqa: BLE001
        return {"ok": False, "backend": "redis", "error": type(exc).__name__}


def check_kafka() -> dict:
    servers = settings.KAFKA_BOOTSTRAP_SERVERS
    if not servers:
        return {"ok": True, "backend": "disabled (KAFKA_BOOTSTRAP_SERVERS unset)", "embedded": True}
    for server in servers:
        host, _, port = server.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1):
                return {"ok": True, "backend": "kafka", "bootstrap": server}
        except (OSError, ValueError):
            continue
    return {"ok": False, "backend": "kafka", "error": "no bootstrap server reachable"}


_outbox_cache: tuple[float, dict] | None = None  # (monotonic time, figure) of this process


def cached_outbox_status() -> dict:
    """The outbox figure, counted at most once per READYZ_OUTBOX_CACHE_SECONDS per process:
    /readyz is public, and the count is a scan of the unpublished rows."""
    global _outbox_cache
    now = time.monotonic()
    if _outbox_cache is not None and now - _outbox_cache[0] < settings.READYZ_OUTBOX_CACHE_SECONDS:
        return _outbox_cache[1]
    try:
        status = outbox_status()
    except Exception as exc:  # noqa: BLE001 - the database check reports the cause
        status = {"ok": False, "error": type(exc).__name__}
    _outbox_cache = (now, status)
    return status


def readiness() -> dict:
    return {
        "database": check_database(),
        "redis": check_redis(),
        "kafka": check_kafka(),
        "outbox": cached_outbox_status(),
    }


@require_GET
@never_cache
def readyz(request):
    """Database, Redis and Kafka reachable: 200, else 503. The status code is public (load
    balancers); what is down, and the figures, only for the metrics credentials."""
    checks = readiness()
    down = [name for name, check in checks.items() if not check.get("ok")]
    body = {"status": "ok" if not down else "unavailable"}
    if metrics_allowed(request):
        body.update(down=down, checks=checks)
    return JsonResponse(body, status=200 if not down else 503)


def metrics_allowed(request) -> bool:
    """A bearer METRICS_TOKEN, or a TCP peer in METRICS_ALLOWED_IPS on a request that came
    straight to the server: behind a proxy the peer is the proxy, whoever the client is, and
    a forwarding header is never believed here (apps.core.clientaddr)."""
    token = settings.METRICS_TOKEN
    if token:
        supplied = request.headers.get("Authorization", "")
        if hmac.compare_digest(supplied.encode(), f"Bearer {token}".encode()):
            return True
    if came_through_a_proxy(request):
        return False
    return request.META.get("REMOTE_ADDR") in settings.METRICS_ALLOWED_IPS


@require_GET
@never_cache
def metrics(request):
    """Prometheus text format, aggregated over every process when multiprocess mode is on."""
    if not metrics_allowed(request):
        return JsonResponse({"code": "forbidden", "detail": "metrics are restricted"}, status=403)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


class HealthCheckMiddleware:
    """Answers /healthz and /readyz before host validation and the HTTPS redirect.

    Load balancers and container health checks probe by IP over plain HTTP; those probes must
    not get a 400 (DisallowedHost) or a 301 to https.
    """

    routes = {"/healthz": ("healthz", healthz), "/readyz": ("readyz", readyz)}

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        route = self.routes.get(request.path_info)
        if route is None:
            return self.get_response(request)

        name, view = route
        start = time.perf_counter()
        response = view(request)
        observe_request(request, name, response, start)
        return response
