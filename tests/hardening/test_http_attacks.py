"""Attacks on the HTTP side (issue 12: 2, 7, 9, 11, 13, 15, 16), each against real server
processes: spoofed proxy headers, invented methods, half-sent requests, foreign origins,
malformed input, the readiness probe, plain ws:// in production."""

from __future__ import annotations

import asyncio
import http.client
import json
import secrets
import socket
import time
from urllib.parse import quote

import pytest
from django.conf import settings

from tests import factories
from tests.support.processes import assert_clean_log
from tests.support.wsclient import Socket, handshake_status, run, session_cookie
from tests.test_foundation import PRODUCTION_ENV

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.services]

# Production settings, answering the address the tests connect to.
PRODUCTION = dict(PRODUCTION_ENV, ALLOWED_HOSTS="127.0.0.1", CSRF_TRUSTED_ORIGINS="")


def request(server, method, path, *, headers=None, body=None, timeout=15):
    """(status, headers, body text) of one request on its own connection."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        hdrs = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers={**hdrs, **(headers or {})})
        response = conn.getresponse()
        return (
            response.status,
            dict(response.getheaders()),
            response.read().decode(errors="replace"),
        )
    finally:
        conn.close()


def own_cache(**overrides):
    """Server settings with a cache (throttle counts) of its own: other tests' requests from
    127.0.0.1 to their servers must not spend this test's budget."""
    return {"CHANNELS_PREFIX": f"{settings.CHANNELS_PREFIX}h{secrets.token_hex(4)}", **overrides}


def contract_error(status, headers, body, code):
    assert headers.get("Content-Type", "").startswith("application/json"), (status, headers, body)
    data = json.loads(body)
    assert data["code"] == code, (status, data)
    assert "Traceback" not in body
    return data


# --- 2. X-Forwarded-For / X-Forwarded-Proto from the client ----------------------------------


def test_a_spoofed_forwarded_for_opens_no_metrics_and_dodges_no_throttle(start_server, user):
    direct = start_server(**own_cache(THROTTLE_TOKEN="4/minute", THROTTLE_SIGNUP="3/hour"))
    behind = start_server(
        **own_cache(
            THROTTLE_TOKEN="4/minute", NUM_PROXIES=1, METRICS_ALLOWED_IPS="198.51.100.7,127.0.0.1"
        )
    )
    wrong = {"username": user.username, "password": "not-the-password"}

    # /metrics: the default list is 127.0.0.1; a forwarding header, whatever it says, means a
    # proxy's peer address, which the list never matches.
    assert request(direct, "GET", "/metrics")[0] == 200
    assert request(behind, "GET", "/metrics")[0] == 200  # straight from a listed address
    for server in (direct, behind):
        for spoof in ("127.0.0.1", "198.51.100.7", "127.0.0.1, 127.0.0.1"):
            status, headers, body = request(
                server, "GET", "/metrics", headers={"X-Forwarded-For": spoof}
            )
            assert status == 403, (spoof, status)
            contract_error(status, headers, body, "forbidden")

    # No proxy configured: a new X-Forwarded-For per guess is still one address, one budget.
    statuses = [
        request(
            direct,
            "POST",
            "/api/auth/token/",
            body=wrong,
            headers={"X-Forwarded-For": f"10.0.{i}.{i}"},
        )[0]
        for i in range(10)
    ]
    assert statuses[:4] == [400] * 4 or statuses[:4] == [401] * 4, statuses
    assert statuses[4:] == [429] * 6, statuses
    signups = [
        request(
            direct,
            "POST",
            "/api/users/",
            headers={"X-Forwarded-For": f"10.1.0.{i}"},
            body={"username": f"spoof{secrets.token_hex(4)}", "password": "long-enough-password-1"},
        )[0]
        for i in range(6)
    ]
    assert signups[:3] == [201] * 3 and signups[3:] == [429] * 3, signups

    # One proxy: only the entry it appended (the rightmost) counts; what the client put left
    # of it changes nothing, and another client (another rightmost entry) has its own budget.
    statuses = [
        request(
            behind,
            "POST",
            "/api/auth/token/",
            body=wrong,
            headers={"X-Forwarded-For": f"10.0.{i}.{i}, 198.51.100.7"},
        )[0]
        for i in range(8)
    ]
    assert 429 not in statuses[:4] and statuses[4:] == [429] * 4, statuses
    other = request(
        behind,
        "POST",
        "/api/auth/token/",
        body=wrong,
        headers={"X-Forwarded-For": "198.51.100.7, 198.51.100.8"},
    )[0]
    assert other in (400, 401), other
    for server in (direct, behind):
        assert_clean_log(server)


def test_a_spoofed_forwarded_proto_makes_plain_http_nothing_more(start_server):
    token = secrets.token_hex(16)
    plain = start_server(**PRODUCTION, METRICS_TOKEN=token)
    tls_proxy = start_server(**PRODUCTION, BEHIND_TLS_PROXY=1, NUM_PROXIES=1)
    spoof = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.9"}

    # No TLS proxy configured: the header is the client's word; plain HTTP is redirected.
    status, headers, _ = request(plain, "GET", "/api/me/", headers=spoof)
    assert status == 301 and headers["Location"].startswith("https://"), (status, headers)
    # Behind the configured TLS proxy, the proxy's header is believed.
    assert request(tls_proxy, "GET", "/api/me/", headers=spoof)[0] == 401
    assert request(tls_proxy, "GET", "/api/me/")[0] == 301
    # Production has no default metrics address list: a token or an explicit list.
    status, headers, body = request(plain, "GET", "/metrics")
    assert status == 403
    contract_error(status, headers, body, "forbidden")
    status, _, body = request(
        plain, "GET", "/metrics", headers={"Authorization": f"Bearer {token}"}
    )
    assert status == 200 and "chat_http_requests_total" in body


# --- 7. Metric labels ----------------------------------------------------------------------------


def test_invented_methods_and_paths_do_not_grow_the_metrics(start_server):
    server = start_server()
    for path in ("/healthz", "/api/me/", "/nope"):
        request(server, "GET", path)
    before = request(server, "GET", "/metrics")[2]
    for i in range(300):
        method = "X" + secrets.token_hex(6).upper()
        request(server, method, f"/api/{secrets.token_hex(4)}/?{i}")
        request(server, "GET", f"/{secrets.token_hex(4)}/{i}")
    after = request(server, "GET", "/metrics")[2]

    series = [line for line in after.splitlines() if line.startswith("chat_http_requests_total{")]
    methods = {line.split('method="', 1)[1].split('"', 1)[0] for line in series}
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}, methods
    assert "other" in methods
    assert len(series) < 20, series
    assert len(after) - len(before) < 8000, (len(before), len(after))
    assert_clean_log(server)


# --- 9. Slowloris ---------------------------------------------------------------------------------


def _trickle_until_closed(port, first: bytes, drip: bytes, *, limit: float) -> tuple[float, bytes]:
    """Send `first`, then one byte of `drip` (if any) every 0.3 s; return (seconds until the
    server closed the connection, what it answered)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=limit)
    sock.settimeout(0.3)
    started = time.monotonic()
    answer, sent = b"", 0
    try:
        sock.sendall(first)
        while time.monotonic() - started < limit:
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                chunk = None
            except OSError:  # reset
                break
            if chunk == b"":
                break
            if chunk:
                answer += chunk
                continue
            if drip:
                try:
                    sock.send(drip[sent % len(drip) :][:1])
                except OSError:
                    break
                sent += 1
        else:
            raise AssertionError(f"still open after {limit} s (answered {answer!r})")
        return time.monotonic() - started, answer
    finally:
        sock.close()


def test_half_sent_requests_are_cut_off_and_websockets_live_on(start_server, user):
    server = start_server(CHAT_HTTP_HEADER_TIMEOUT_SECONDS=2, CHAT_HTTP_BODY_TIMEOUT_SECONDS=3)
    token = factories.make_token(user)

    async def scenario():
        sock = await Socket.open(server, token=token)  # a socket older than both deadlines
        headers = asyncio.to_thread(
            _trickle_until_closed,
            server.port,
            b"GET /api/me/ HTTP/1.1\r\nHost: 127.0.0.1\r\n",
            b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaa",
            limit=8,
        )
        body = asyncio.to_thread(
            _trickle_until_closed,
            server.port,
            b"POST /api/rooms/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b'Content-Length: 5000\r\n\r\n{"name": "',
            b"x",
            limit=10,
        )
        idle = asyncio.to_thread(_trickle_until_closed, server.port, b"", b"", limit=8)
        cut = await asyncio.gather(headers, body, idle)
        await asyncio.sleep(1)
        pong, _ = await sock.ping()
        await sock.close()
        return cut, pong

    (headers, body, idle), pong = run(scenario())
    assert headers[0] < 2 + 2.5 and headers[1].startswith(b"HTTP/1.1 408"), headers
    assert body[0] < 2 + 3 + 2.5 and body[1].startswith(b"HTTP/1.1 408"), body
    assert idle[0] < 2 + 2.5 and idle[1] == b"", idle  # nothing started: closed without a word
    assert pong["type"] == "pong"
    # A whole request on a kept-alive connection is answered, twice.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    for _ in range(2):
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        assert response.status == 200 and response.read()
    conn.close()
    assert_clean_log(server)


# --- 11. Origin: scheme, host and port -------------------------------------------------------------


def test_the_websocket_origin_must_match_scheme_host_and_port(start_server, user):
    server = start_server(CSRF_TRUSTED_ORIGINS="http://app.example.test:8443,https://*.example.org")
    cookie = session_cookie(user)
    port = server.port

    async def scenario():
        statuses = {}
        for origin in (
            f"http://127.0.0.1:{port}",  # the page's own origin
            "http://app.example.test:8443",  # trusted, exactly
            "https://chat.example.org",  # trusted, by subdomain
            "http://127.0.0.1:9999",  # another port on the same host
            f"https://127.0.0.1:{port}",  # another scheme
            f"http://localhost:{port}",  # another allowed host, not this request's
            "http://app.example.test:8444",
            "http://chat.example.org",
            "null",
        ):
            statuses[origin] = await handshake_status(server, cookie=cookie, origin=origin)
        return statuses

    statuses = run(scenario())
    accepted = [origin for origin, status in statuses.items() if status is None]
    assert accepted == [
        f"http://127.0.0.1:{port}",
        "http://app.example.test:8443",
        "https://chat.example.org",
    ], statuses
    assert {status for origin, status in statuses.items() if origin not in accepted} == {403}
    assert_clean_log(server)


# --- 13. No 500, no HTML under /api/ -------------------------------------------------------------


@pytest.mark.parametrize("mode", ["development", "production"])
def test_malformed_requests_get_contract_json_never_a_500(start_server, user, mode):
    env = dict(PRODUCTION, BEHIND_TLS_PROXY=1) if mode == "production" else {}
    server = start_server(**env)
    tls = {"X-Forwarded-Proto": "https"} if mode == "production" else {}
    auth = {"Authorization": f"Token {factories.make_token(user)}", **tls}
    nested = b"[" * 100_000 + b"]" * 100_000
    big = json.dumps({"name": "x" * (3 * 1024 * 1024)}).encode()

    cases = [
        ("GET", "/api/users/?search=%00", None, {}, 400, "invalid"),
        ("GET", "/api/rooms/?search=ab%00cd", None, {}, 400, "invalid"),
        ("POST", "/api/rooms/", nested, {}, 400, "invalid"),
        ("POST", "/api/rooms/", big, {}, 413, "too_large"),
        (
            "POST",
            "/api/rooms/",
            b"name=" + b"x" * (3 * 1024 * 1024),
            {"Content-Type": "application/x-www-form-urlencoded"},
            413,
            "too_large",
        ),
        ("GET", "/api/no-such-thing", None, {}, 404, "not_found"),
        ("POST", "/api/rooms", b'{"name": "no slash"}', {}, 404, "not_found"),
    ]
    for method, path, body, headers, status, code in cases:
        got, got_headers, text = request(
            server, method, path, body=body, headers={**auth, **headers}
        )
        if got == 301 and method == "GET":  # APPEND_SLASH: follow it once
            got, got_headers, text = request(
                server,
                method,
                got_headers["Location"].split(str(server.port), 1)[-1],
                headers={**auth, **headers},
            )
        assert got == status, (method, path, got, text[:300])
        contract_error(got, got_headers, text, code)

    # Outside /api/ the NUL is refused too (the admin's search would be a DataError).
    assert request(server, "GET", "/admin/messaging/message/?q=%00", headers=tls)[0] == 400
    assert_clean_log(server)
    # Last, as Django logs it at ERROR (django.security.DisallowedHost): a host not allowed.
    contract_error(
        *request(server, "GET", "/api/me/", headers={**auth, "Host": "evil.example"}), "invalid"
    )


@pytest.mark.parametrize("mode", ["development", "production"])
def test_a_server_error_under_the_api_is_contract_json_not_a_page(start_server, child_env, mode):
    """A real 500: the server's database does not exist (in development Django would show its
    debug page, in production its HTML 500 page)."""
    env = dict(PRODUCTION, BEHIND_TLS_PROXY=1) if mode == "production" else {}
    missing = (
        child_env["DATABASE_URL"].rsplit("/", 1)[0] + "/no_such_database_" + secrets.token_hex(4)
    )
    server = start_server(**env, DATABASE_URL=missing, DATABASE_POOL_TIMEOUT=1)
    tls = {"X-Forwarded-Proto": "https"} if mode == "production" else {}
    status, headers, body = request(
        server, "GET", "/api/me/", headers={**tls, "Authorization": "Token " + "0" * 40}
    )
    assert status == 500, (status, body[:300])
    data = contract_error(status, headers, body, "unavailable")
    assert set(data) == {"code", "detail"}
    assert "no_such_database" not in body and "<html" not in body.lower()
    # Outside /api/ Django's own page stays (HTML for people).
    status, headers, _ = request(
        server, "GET", "/admin/", headers={**tls, "Cookie": "sessionid=" + "a" * 32}
    )
    assert status == 500 and headers["Content-Type"].startswith("text/html")


def test_admin_filters_and_unknown_websocket_paths_answer_cleanly(start_server):
    server = start_server()
    admin = factories.make_user(is_staff=True, is_superuser=True)
    cookie = session_cookie(admin)
    for value in ("²", "١٢", "99999999999999999999", "-1", "1"):
        status, _, body = request(
            server, "GET", f"/admin/events/event/?room={quote(value)}", headers={"Cookie": cookie}
        )
        assert status == 200, (value, status, body[:300])

    async def scenario():
        return [
            await handshake_status(server, cookie=cookie, origin=server.http_url, path=path)
            for path in ("/nope/", "/ws/extra/", "/")
        ]

    assert run(scenario()) == [403, 403, 403]
    assert_clean_log(server)


# --- 15. /readyz ------------------------------------------------------------------------------------


def test_readyz_tells_strangers_only_the_status_and_caches_the_outbox_count(start_server, user):
    token = secrets.token_hex(16)
    server = start_server(
        METRICS_ALLOWED_IPS="10.9.9.9", METRICS_TOKEN=token, READYZ_OUTBOX_CACHE_SECONDS=3
    )
    bearer = {"Authorization": f"Bearer {token}"}

    status, _, body = request(server, "GET", "/readyz")
    assert status == 200 and json.loads(body) == {"status": "ok"}
    assert request(server, "GET", "/healthz")[0] == 200

    first = json.loads(request(server, "GET", "/readyz", headers=bearer)[2])
    factories.make_room(user)  # two more unpublished events (no worker runs here)
    cached = json.loads(request(server, "GET", "/readyz", headers=bearer)[2])
    time.sleep(3.2)
    fresh = json.loads(request(server, "GET", "/readyz", headers=bearer)[2])
    assert first["checks"]["outbox"]["pending"] == cached["checks"]["outbox"]["pending"]
    assert fresh["checks"]["outbox"]["pending"] == first["checks"]["outbox"]["pending"] + 2
    assert fresh["down"] == []


# --- 16. Plain ws:// in production; the default hosts ---------------------------------------------


def test_production_refuses_websockets_that_are_not_over_tls(start_server, user):
    plain = start_server(**PRODUCTION)
    proxied = start_server(**PRODUCTION, BEHIND_TLS_PROXY=1)
    token = factories.make_token(user)

    async def scenario():
        refused = [
            await handshake_status(plain, token=token),
            # Not configured: the client's X-Forwarded-Proto says nothing.
            await handshake_status(
                plain,
                token=token,
                origin=f"https://127.0.0.1:{plain.port}",
                headers={"X-Forwarded-Proto": "https"},
            ),
            await handshake_status(proxied, token=token),  # plain ws:// past the proxy
        ]
        sock = await Socket.open(
            proxied,
            token=token,
            origin=f"https://127.0.0.1:{proxied.port}",
            headers={"X-Forwarded-Proto": "https"},
        )
        pong, _ = await sock.ping()
        await sock.close()
        return refused, sock.hello, pong

    refused, hello, pong = run(scenario())
    assert refused == [403, 403, 403]
    assert hello["user"]["id"] == user.pk and pong["type"] == "pong"


def test_testserver_is_not_an_allowed_host_by_default(start_server):
    server = start_server(ALLOWED_HOSTS="")  # unset: the settings' default
    assert request(server, "GET", "/api/me/", headers={"Host": "testserver"})[0] == 400
    assert request(server, "GET", "/api/me/")[0] == 401  # 127.0.0.1 is
