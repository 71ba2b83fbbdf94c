"""Rate limits on sign-up, token and send (rates: REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"])."""

from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle


class ScopeThrottle(SimpleRateThrottle):
    """Per user when authenticated, else per client address. Reads its rate at request time."""

    def get_rate(self):
        # DRF binds THROTTLE_RATES at import; reading it here lets settings change it.
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)

    def get_cache_key(self, request, view):
        if request.user and request.user.is_authenticated:
            ident = request.user.pk
        else:
            ident = self.get_ident(request)
        return self.cache_format % {"scope": self.scope, "ident": ident}


class SignupThrottle(ScopeThrottle):
    scope = "signup"


class TokenThrottle(ScopeThrottle):
    scope = "token"


class SendThrottle(ScopeThrottle):
    scope = "send"
