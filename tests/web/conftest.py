"""Headless Chromium (Debian's package) driven by Playwright, and helpers for the chat page."""

import json
import os
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests import factories
from tests.support.processes import ServerProcess, subprocess_env
from tests.support.services import ROOT

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(ROOT) / "test-artifacts" / "web"
PASSWORD = "pw-for-tests-1"  # tests.factories.make_user's default
expect.set_options(timeout=10000)  # a shared 2-core machine: generous, still bounded


@pytest.fixture
def child_env(transactional_db):
    # Playwright's sync API keeps an event loop in the test's thread, so `browser` sets
    # DJANGO_ALLOW_ASYNC_UNSAFE for the ORM calls pytest-django makes there (the database
    # flush after each test; the tests' own writes go through in_thread). The server must
    # not inherit it.
    env = subprocess_env()
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    return env


@pytest.fixture(scope="module")
def shared_server(django_db_setup):
    """One daphne process for the module's tests (each test still gets a flushed database:
    ids keep growing across the flush, so nothing the server caches per room or user is stale)."""
    env = subprocess_env()
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    proc = ServerProcess(env).start()
    yield proc
    proc.stop()


@pytest.fixture
def server(shared_server, transactional_db):
    assert shared_server.alive(), "the shared server died:\n" + shared_server.output()[-3000:]
    return shared_server


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (bin/test does it)")
    from playwright.sync_api import sync_playwright

    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    playwright = sync_playwright().start()
    chromium = playwright.chromium.launch(
        executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
    )
    yield chromium
    chromium.close()
    playwright.stop()
    os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


@pytest.fixture
def open_page(browser):
    """open_page(server, user, width=1100) -> a logged-in page on the chat (own context each)."""
    contexts = []

    def _open(server, user, *, width=1100, height=760, ws_filter=None):
        """`ws_filter(frame) -> bool`: the server's frames it returns False for never reach
        the page (a frame lost on the way, as a test wants it)."""
        context = browser.new_context(viewport={"width": width, "height": height})
        context.set_default_timeout(15000)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: page.errors.append(str(exc)))
        page.errors = []
        if ws_filter is not None:
            page.route_web_socket(re.compile(r"/ws/"), lambda ws: _filtered(ws, ws_filter))
        login(page, server, user.username)
        return page

    yield _open
    for context in contexts:
        context.close()


def _filtered(ws, keep):
    """Relay one page's WebSocket to the server, dropping the server frames `keep` refuses."""
    server_ws = ws.connect_to_server()

    def from_server(message):
        try:
            frame = json.loads(message)
        except (TypeError, ValueError):
            frame = None
        if not isinstance(frame, dict) or keep(frame):
            ws.send(message)

    server_ws.on_message(from_server)
    ws.on_message(server_ws.send)


def login(page, server, username, password=PASSWORD):
    page.goto(server.http_url + "/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    try:
        page.wait_for_url(server.http_url + "/")
        wait_connected(page)
    except Exception as exc:
        screenshot(page, f"login-failed-{username}")
        raise AssertionError(
            f"login failed at {page.url}: {page.inner_text('body')[:500]}\n"
            + server.output()[-3000:]
        ) from exc


def admin_login(page, server, username, next_path, password=PASSWORD):
    """Log into the admin on `page` and land on `next_path`."""
    page.goto(f"{server.http_url}/admin/login/?next={next_path}")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


def wait_connected(page, timeout=20000):
    expect(page.locator("body")).to_have_attribute("data-connection", "online", timeout=timeout)


def screenshot(page, name):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=False)


def in_thread(fn, *args, **kwargs):
    """Run ORM and service calls off the Playwright thread.

    Playwright's sync API keeps an event loop in the test's thread, where Django refuses
    async_to_sync (the services' after-commit fan-out). A short-lived thread has no loop.
    """
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connections

    def call():
        try:
            return fn(*args, **kwargs)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(call).result()


def make_user(username, *, moderator=False):
    """A user the server process can log in: its hash uses the production hasher.

    The test settings hash with MD5 for speed; the server runs the production settings,
    which do not accept MD5 hashes.
    """
    from django.contrib.auth.hashers import PBKDF2PasswordHasher

    if moderator:
        ensure_moderators_group()
    user = (
        factories.make_moderator(username=username) if moderator else factories.make_user(username)
    )
    hasher = PBKDF2PasswordHasher()
    user.password = hasher.encode(PASSWORD, hasher.salt(), iterations=20000)
    user.save(update_fields=["password"])
    return user


def ensure_moderators_group():
    """The group data migrations made; a transactional test's flush deleted it."""
    import importlib

    from django.apps import apps

    importlib.import_module(
        "apps.moderation.migrations.0002_moderators_see_event_log_reports_accounts"
    ).ensure_group(apps)
