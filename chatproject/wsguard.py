"""What a WebSocket handshake must pass before authentication: a known path, an allowed Origin,
and TLS where it is required. A refusal closes before accepting (daphne answers HTTP 403), with
no database query and no traceback.

The Origin rule is Django's CSRF origin check (CsrfViewMiddleware._origin_verified): the page's
own origin (scheme, host and port of this request, the host being one of ALLOWED_HOSTS), or an
entry of CSRF_TRUSTED_ORIGINS (exact, or `https://*.example.com` for any subdomain). Channels'
AllowedHostsOriginValidator compared the host only, so `http://127.0.0.1:9999` (another
program on the same machine) passed with the user's session cookie.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings
from django.http.request import split_domain_port, validate_host
from django.utils.http import is_same_domain

from apps.core.clientaddr import is_secure_scope


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def origin_allowed(scope) -> bool:
    """Django's CSRF origin rule for the handshake's Origin header (see the module)."""
    origin = _header(scope, b"origin")
    if not origin or origin == "null":
        return False
    host = _header(scope, b"host")
    if host:
        domain, _port = split_domain_port(host)
        if domain and validate_host(domain, settings.ALLOWED_HOSTS):
            scheme = "https" if is_secure_scope(scope) else "http"
            if origin == f"{scheme}://{host}":
                return True
    trusted = settings.CSRF_TRUSTED_ORIGINS
    if origin in trusted:
        return True
    try:
        parsed = urlsplit(origin)
    except ValueError:
        return False
    return any(
        is_same_domain(
            parsed.netloc, entry.split("://", 1)[1][1:]
        )  # "*.example.com" → ".example.com"
        for entry in trusted
        if "://*" in entry and entry.split("://", 1)[0] == parsed.scheme
    )


class WebSocketGuard:
    """ASGI middleware for the websocket scope: path, Origin, then TLS (module docstring)."""

    def __init__(self, inner, *, routes):
        self.inner = inner
        self.routes = routes  # the URLRouter's patterns, to know a path before routing

    def known_path(self, scope) -> bool:
        path = scope.get("path_info") or scope.get("path", "")
        path = path[1:] if path.startswith("/") else path
        return any(route.pattern.match(path) for route in self.routes)

    def refusal(self, scope) -> str | None:
        if not self.known_path(scope):
            return "unknown path"
        if not origin_allowed(scope):
            return "origin not allowed"
        if settings.CHAT_WS_REQUIRE_TLS and not is_secure_scope(scope):
            return "not over TLS"
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket" and self.refusal(scope) is not None:
            # Close before accept (daphne: HTTP 403). Not Channels' WebsocketDenier: as a
            # consumer it would open a channel-layer receive loop per refused handshake.
            if (await receive())["type"] == "websocket.connect":
                await send({"type": "websocket.close"})
            return None
        return await self.inner(scope, receive, send)
