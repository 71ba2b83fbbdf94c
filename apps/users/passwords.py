"""Guessing passwords costs the guesser, not everyone else.

Each check of a password hashes it (PBKDF2, about 0.6 s of CPU by design), so every path that
checks or sets one (the token endpoint, the log-in page, sign-up by REST and page) is limited
twice per client address: by the API's throttles (`token`, `signup` — one bucket for a page and
its API twin, so alternating them buys nothing), and by PASSWORD_HASH_CONCURRENCY, how many
hashes that address may have running at once. The hashing itself never runs on the event loop:
Django runs these sync views in a worker thread under ASGI, and hashlib releases the GIL.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

from django.conf import settings
from django.core.cache import cache

from apps.core.errors import ServiceError

from .throttles import ScopeThrottle

logger = logging.getLogger(__name__)
SLOT_SECONDS = 30  # a slot left by a killed process frees itself after this


class _HashingSlots(ScopeThrottle):
    """Not a rate: only its cache key, the client the API throttles see (get_cache_key)."""

    scope = "hashing"


def throttled(request, throttle_class) -> int | None:
    """Apply an API throttle to a Django form POST: None when allowed, else seconds to wait."""
    throttle = throttle_class()
    if throttle.allow_request(request, None):
        return None
    return max(1, int(throttle.wait() or 1))


@contextmanager
def hashing_slot(request):
    """Hold one of this client's PASSWORD_HASH_CONCURRENCY slots while a password is hashed;
    `rate_limited` when all are taken."""
    limit = settings.PASSWORD_HASH_CONCURRENCY
    if limit <= 0:
        yield
        return
    base = _HashingSlots().get_cache_key(request, None)
    held = None
    try:
        for index in range(limit):
            if cache.add(f"{base}:{index}", 1, SLOT_SECONDS):
                held = f"{base}:{index}"
                break
        else:
            raise ServiceError(
                "rate_limited", "too many password checks at once from this address; try again"
            )
    except ServiceError:
        raise
    except Exception:  # the cache is down: the throttles decide; do not turn it into a 500
        logger.warning("password hashing slots unavailable", exc_info=True)
    try:
        yield
    finally:
        if held is not None:
            try:
                cache.delete(held)
            except Exception:
                logger.warning("password hashing slot not released", exc_info=True)
