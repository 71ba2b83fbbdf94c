"""Which client address and scheme to believe: the socket's own, unless proxies are configured.

daphne is told nothing about proxy headers (chatproject.serve), so `scope["client"]` and
`REMOTE_ADDR` are always the TCP peer and `scope["scheme"]` is what the socket is. Whatever needs
the client's address (the REST throttles, the form throttles, logs) asks `client_address()`:

- `NUM_PROXIES` = 0 (the default): the TCP peer. A client-sent `X-Forwarded-For` is ignored.
- `NUM_PROXIES` = N: each of the N proxies appends the address it saw to `X-Forwarded-For`, so
  the N-th entry from the right is the one the outermost proxy saw; entries further left are
  whatever the client sent and are never read (DRF's rule for `NUM_PROXIES`).

What counts as a secure (TLS) connection follows Django's `SECURE_PROXY_SSL_HEADER`, set only
with `BEHIND_TLS_PROXY` (`is_secure_scope()` applies the same rule to WebSocket scopes).
"""

from __future__ import annotations

import ipaddress

from django.conf import settings

# Headers by which a proxy says it forwarded a request (their presence, not their value, counts).
FORWARDING_HEADERS = (b"x-forwarded-for", b"forwarded", b"x-real-ip")


def forwarded_client(peer: str | None, forwarded_for: str | None) -> str | None:
    """The client address from the TCP peer and the X-Forwarded-For value (see the module)."""
    proxies = settings.NUM_PROXIES
    if not proxies or not forwarded_for:
        return peer
    entries = forwarded_for.split(",")
    candidate = entries[-min(proxies, len(entries))].strip()
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:  # not an address: our proxy did not write it, so it says nothing
        return peer


def client_address(request) -> str | None:
    """The client address of a Django request (REMOTE_ADDR is the TCP peer)."""
    meta = request.META
    return forwarded_client(meta.get("REMOTE_ADDR"), meta.get("HTTP_X_FORWARDED_FOR"))


def _header(scope, name: bytes) -> str | None:
    values = [v.decode("latin-1") for k, v in scope.get("headers", ()) if k.lower() == name]
    return ",".join(values) if values else None


def scope_client_address(scope) -> str | None:
    """The client address of an ASGI scope (HTTP or WebSocket)."""
    client = scope.get("client")
    peer = client[0] if client else None
    return forwarded_client(peer, _header(scope, b"x-forwarded-for"))


def is_secure_scope(scope) -> bool:
    """Django's HttpRequest.is_secure() for an ASGI scope: the proxy's header when
    SECURE_PROXY_SSL_HEADER is set (BEHIND_TLS_PROXY) and present, else the socket's scheme."""
    if settings.SECURE_PROXY_SSL_HEADER:
        header, secure_value = settings.SECURE_PROXY_SSL_HEADER
        name = header.removeprefix("HTTP_").replace("_", "-").lower().encode()
        value = _header(scope, name)
        if value is not None:
            return value.split(",", 1)[0].strip() == secure_value
    return scope.get("scheme") in ("https", "wss")


def came_through_a_proxy(request) -> bool:
    """The request carries a proxy's forwarding header (or pretends to): its TCP peer is then
    a proxy, not the client, and an address allow-list must not match it."""
    return any(
        "HTTP_" + name.decode().upper().replace("-", "_") in request.META
        for name in FORWARDING_HEADERS
    )
