"""apps.core.clientaddr and chatproject.wsguard's Origin rule, as pure functions of settings
and headers (the attacks on real servers are in tests/hardening/test_http_attacks.py)."""

import pytest
from django.test import override_settings

from apps.core.clientaddr import forwarded_client, is_secure_scope
from chatproject.wsguard import origin_allowed


@pytest.mark.parametrize(
    "proxies, header, expected",
    [
        (0, "203.0.113.1", "10.0.0.1"),  # no proxy configured: the header is the client's word
        (0, None, "10.0.0.1"),
        (1, "203.0.113.1", "203.0.113.1"),
        (1, "6.6.6.6, 203.0.113.1", "203.0.113.1"),  # the client's own entries are left of ours
        (2, "6.6.6.6, 203.0.113.1, 10.0.0.9", "203.0.113.1"),
        (2, "203.0.113.1", "203.0.113.1"),  # fewer entries than proxies: the leftmost (DRF's rule)
        (1, "6.6.6.6, not-an-address", "10.0.0.1"),  # not written by our proxy: the peer
        (1, " 2001:db8::1 ", "2001:db8::1"),
        (1, None, "10.0.0.1"),
    ],
)
def test_the_client_is_the_nth_forwarded_entry_from_the_right(proxies, header, expected):
    with override_settings(NUM_PROXIES=proxies):
        assert forwarded_client("10.0.0.1", header) == expected


def _scope(origin, host="chat.example.com", proto=None):
    headers = [(b"host", host.encode())]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    if proto:
        headers.append((b"x-forwarded-proto", proto.encode()))
    return {"type": "websocket", "headers": headers}


@override_settings(
    ALLOWED_HOSTS=["chat.example.com"],
    CSRF_TRUSTED_ORIGINS=["https://admin.example.net", "https://*.example.org"],
)
@pytest.mark.parametrize(
    "origin, host, proto, tls_proxy, allowed",
    [
        ("http://chat.example.com", "chat.example.com", None, False, True),
        ("https://chat.example.com", "chat.example.com", None, False, False),  # plain socket
        ("https://chat.example.com", "chat.example.com", "https", True, True),
        ("https://chat.example.com", "chat.example.com", "https", False, False),  # not believed
        ("http://chat.example.com:8080", "chat.example.com", None, False, False),
        ("http://chat.example.com:8080", "chat.example.com:8080", None, False, True),
        ("http://evil.example", "evil.example", None, False, False),  # host not allowed
        ("https://admin.example.net", "chat.example.com", None, False, True),
        ("http://admin.example.net", "chat.example.com", None, False, False),
        ("https://a.example.org", "chat.example.com", None, False, True),
        ("https://example.org.evil.test", "chat.example.com", None, False, False),
        ("null", "chat.example.com", None, False, False),
        (None, "chat.example.com", None, False, False),
    ],
)
def test_the_origin_rule_is_djangos_csrf_rule(origin, host, proto, tls_proxy, allowed):
    header = ("HTTP_X_FORWARDED_PROTO", "https") if tls_proxy else None
    with override_settings(SECURE_PROXY_SSL_HEADER=header):
        assert origin_allowed(_scope(origin, host, proto)) is allowed
        assert is_secure_scope(_scope(origin, host, proto)) is (tls_proxy and proto == "https")
