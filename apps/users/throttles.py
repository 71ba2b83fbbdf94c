"""REST rate limits: every write takes from the shared per-user buckets (WriteThrottle, see
apps.users.ratelimit); sign-up and token are limited per address, the data export per user
(REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"])."""

import logging
import math

from django.core.cache.backends.locmem import LocMemCache
from rest_framework.permissions import SAFE_METHODS
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle, SimpleRateThrottle

from apps.core.clientaddr import client_address
from apps.core.errors import RateLimited

from . import ratelimit

logger = logging.getLogger(__name__)

# While the shared cache (Redis) is unreachable, throttles count in this process instead: a
# Redis outage loosens the limits to per-process ones, it never turns a request into a 500.
_local = LocMemCache("throttles-local", {"OPTIONS": {"MAX_ENTRIES": 100_000}})


class WriteThrottle(BaseThrottle):
    """Every authenticated write (POST, PUT, PATCH, DELETE) takes from the user's buckets in
    Redis, the same ones the WebSocket's frames take from (one limiter for every write).

    A view names its budget with `rate_budget`: a budget name, a {method: budget} mapping
    (methods not named take from `write`), or None for no limit. A refused request raises
    RateLimited: 429 `rate_limited` with `retry_after` (whole seconds, rounded up) in the body
    and `Retry-After`, the same answer as slow mode's."""

    def allow_request(self, request, view):
        if request.method in SAFE_METHODS or not (request.user and request.user.is_authenticated):
            return True
        budget = getattr(view, "rate_budget", "write")
        if isinstance(budget, dict):
            budget = budget.get(request.method, "write")
        if budget is None:
            return True
        wait = ratelimit.take_sync(request.user.pk, budget)
        if wait:
            raise RateLimited("too many writes; slow down", retry_after=math.ceil(wait))
        return True


class ScopeThrottle(SimpleRateThrottle):
    """Per user when authenticated, else per client address. Reads its rate at request time."""

    def get_rate(self):
        # DRF binds THROTTLE_RATES at import; reading it here lets settings change it.
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)

    def allow_request(self, request, view):
        try:
            return super().allow_request(request, view)
        except Exception:  # the shared cache is down: count in this process meanwhile
            logger.warning(
                "throttle cache unavailable; counting %s locally", self.scope, exc_info=True
            )
            self.cache = _local
            return super().allow_request(request, view)

    def get_cache_key(self, request, view):
        if request.user and request.user.is_authenticated:
            ident = request.user.pk
        else:
            ident = self.get_ident(request)
        return self.cache_format % {"scope": self.scope, "ident": ident}

    def get_ident(self, request):
        # DRF's own reads X-Forwarded-For whole when NUM_PROXIES is unset: one rule for all.
        return client_address(request)


class SignupThrottle(ScopeThrottle):
    scope = "signup"


class TokenThrottle(ScopeThrottle):
    scope = "token"


class ExportThrottle(ScopeThrottle):
    scope = "export"
