"""Password guessing and look-alike sign-ups against a real server process (production hashing:
PBKDF2, not the test settings' MD5).

Each server here gets a CHANNELS_PREFIX of its own, so its throttle counts (kept per client
address, and every request here comes from 127.0.0.1) start from zero whatever ran before.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import json
import re
import statistics
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import PBKDF2PasswordHasher

from tests import factories
from tests.support.processes import assert_clean_log
from tests.support.wsclient import Socket, run

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.services]


def _victim(username, password):
    """A user whose password the server must really hash to check (the test settings' MD5 hash
    would fail fast on a server that only knows PBKDF2)."""
    user = factories.make_user(username)
    hasher = PBKDF2PasswordHasher()
    user.password = hasher.encode(password, hasher.salt())
    user.save(update_fields=["password"])
    return user


def _server(start_server, child_env, **overrides):
    prefix = f"{child_env['CHANNELS_PREFIX']}acct{uuid.uuid4().hex[:8]}"
    return start_server(CHANNELS_PREFIX=prefix, **overrides)


def _json(server, method, path, body=None, headers=None):
    request = urllib.request.Request(
        server.http_url + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, raw, retry = response.status, response.read(), response.headers["Retry-After"]
    except urllib.error.HTTPError as err:
        status, raw, retry = err.code, err.read(), err.headers["Retry-After"]
    return status, json.loads(raw or b"null"), retry, time.monotonic() - started


class Browser:
    """A cookie jar and the CSRF token of the last page, as a browser posts a form."""

    def __init__(self, server):
        self.server = server
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()),
            urllib.request.ProxyHandler({}),
        )
        self.csrf = None

    def get(self, path):
        with self.opener.open(self.server.http_url + path, timeout=30) as response:
            html = response.read().decode()
        self.csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)
        return html

    def post(self, path, fields):
        data = urllib.parse.urlencode({"csrfmiddlewaretoken": self.csrf, **fields}).encode()
        request = urllib.request.Request(
            self.server.http_url + path,
            data=data,
            method="POST",
            headers={"Referer": self.server.http_url + path},
        )
        try:
            with self.opener.open(request, timeout=60) as response:
                return response.status, response.read().decode(), response.headers["Retry-After"]
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(), err.headers["Retry-After"]


def test_password_guesses_on_the_login_page_and_the_token_endpoint_hit_429(start_server, child_env):
    _victim("victim", "the-real-password-1")
    server = _server(start_server, child_env, THROTTLE_TOKEN="5/minute")
    browser = Browser(server)
    browser.get("/login/")
    # The page and the API share one bucket per address: alternating them buys nothing.
    page = [
        browser.post("/login/", {"username": "victim", "password": f"guess-{i}"}) for i in range(3)
    ]
    api = [
        _json(
            server, "POST", "/api/auth/token/", {"username": "victim", "password": f"guess-api-{i}"}
        )
        for i in range(2)
    ]
    assert [status for status, _, _ in page] == [200, 200, 200]
    assert all("Please enter a correct username and password" in html for _, html, _ in page)
    assert [a[0] for a in api] == [401, 401]

    status, html, retry = browser.post("/login/", {"username": "victim", "password": "guess-x"})
    assert status == 429 and "Too many log-in attempts" in html and int(retry) >= 1
    status, body, retry, _ = _json(
        server, "POST", "/api/auth/token/", {"username": "victim", "password": "guess-y"}
    )
    assert status == 429 and body["code"] == "rate_limited" and int(retry) >= 1
    assert_clean_log(server)


def test_concurrent_guesses_from_one_address_are_bounded(start_server, child_env, user):
    """12 guessers at once used to hash 12 passwords at once (0.6 s of CPU each) and slow
    everyone's REST; now one address has at most PASSWORD_HASH_CONCURRENCY hashes in flight."""
    _victim("target", "the-real-password-2")
    server = _server(
        start_server, child_env, THROTTLE_TOKEN="1000/minute", PASSWORD_HASH_CONCURRENCY=1
    )
    token = factories.make_token(user)
    me = [
        _json(server, "GET", "/api/me/", headers={"Authorization": f"Token {token}"})[3]
        for _ in range(5)
    ]
    start, results, lock = threading.Barrier(12), [], threading.Lock()

    def guess(i):
        start.wait()
        result = _json(
            server, "POST", "/api/auth/token/", {"username": "target", "password": f"wrong-{i}"}
        )
        with lock:
            results.append(result)

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    during = [
        _json(server, "GET", "/api/me/", headers={"Authorization": f"Token {token}"})[3]
        for _ in range(5)
    ]
    for thread in threads:
        thread.join(120)
    codes = sorted(status for status, _, _, _ in results)
    assert set(codes) <= {401, 429}, results
    refused = [body for status, body, _, _ in results if status == 429]
    assert len(refused) >= 6, codes  # one slot: nearly all of 12 simultaneous guesses refused
    assert all(body["code"] == "rate_limited" for body in refused)
    assert codes.count(401) >= 1  # the guess that held the slot was checked (and was wrong)
    print(
        f"\n/api/me/ median before {statistics.median(me) * 1000:.0f} ms, during 12 guessers "
        f"{statistics.median(during) * 1000:.0f} ms; guesses: {codes.count(401)} hashed, "
        f"{len(refused)} refused"
    )
    assert_clean_log(server)


def test_password_hashing_runs_off_the_event_loop(start_server, child_env, user):
    """Two guesses hash at once (within the bound) while a socket pings: the pongs come back
    in a fraction of one hash's time, so the hashing ran in worker threads, not on the loop."""
    _victim("hashed", "the-real-password-3")
    server = _server(start_server, child_env, PASSWORD_HASH_CONCURRENCY=2)
    token = factories.make_token(user)
    results = []

    def guess(i):
        results.append(
            _json(
                server, "POST", "/api/auth/token/", {"username": "hashed", "password": f"wrong-{i}"}
            )
        )

    async def scenario():
        sock = await Socket.open(server, token=token)
        await sock.ping()
        threads = [threading.Thread(target=guess, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        rtts = []
        while any(thread.is_alive() for thread in threads):
            sent = time.monotonic()
            await sock.ping()
            rtts.append(time.monotonic() - sent)
            await asyncio.sleep(0.02)
        for thread in threads:
            thread.join()
        await sock.close()
        return rtts

    rtts = run(scenario())
    assert sorted(status for status, _, _, _ in results) == [401, 401], results
    hash_time = min(elapsed for _, _, _, elapsed in results)
    print(
        f"\nguesses took {hash_time * 1000:.0f} ms; {len(rtts)} pings meanwhile, "
        f"median {statistics.median(rtts) * 1000:.0f} ms, max {max(rtts) * 1000:.0f} ms"
    )
    assert len(rtts) >= 3
    assert statistics.median(rtts) < hash_time / 3, (rtts, hash_time)
    assert_clean_log(server)


def test_concurrent_lookalike_signups_create_exactly_one_account(start_server, child_env):
    """`Racer0`, `racer0`, `RACER0`, `Ｒａｃｅｒ０`, … all at once: one 201, the rest a clean
    `invalid` ("taken") from the unique index, never a 500."""
    server = _server(
        start_server, child_env, THROTTLE_SIGNUP="100/hour", PASSWORD_HASH_CONCURRENCY=0
    )
    names = [
        "Racer0",
        "racer0",
        "RACER0",
        "rAcEr0",
        "\uff32\uff41\uff43\uff45\uff52\uff10",
        "racer\uff10",
        "RaceR0",
        "raCer0",
    ]
    start, results, lock = threading.Barrier(len(names)), [], threading.Lock()

    def signup(name):
        start.wait()
        result = _json(
            server, "POST", "/api/users/", {"username": name, "password": "a-fine-long-password"}
        )
        with lock:
            results.append(result)

    threads = [threading.Thread(target=signup, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    codes = sorted(status for status, _, _, _ in results)
    assert codes == [201] + [400] * (len(names) - 1), results
    for status, body, _, _ in results:
        if status == 400:
            assert body["code"] == "invalid" and "taken" in body["detail"], body
            assert "username" in body["errors"], body
    created = get_user_model().objects.filter(username_key="racer0")
    assert created.count() == 1
    assert get_user_model().objects.filter(username__iexact="racer0").count() == 1
    assert_clean_log(server)
