"""Every HTML page under a strict Content-Security-Policy still renders and works in Chromium,
with no violation reported (the admin, the browsable API, the API docs, login and sign-up)."""

import re

import pytest
from playwright.sync_api import expect

from apps.web.csp import STRICT_CSP
from tests import factories

from .conftest import PASSWORD, in_thread, make_user, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# Reports every violation, whichever directive it is (the page's own scripts cannot hide it:
# the listener is installed before any of them runs).
WATCH_VIOLATIONS = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__csp.push(e.violatedDirective + " " + (e.blockedURI || "inline") + " " + e.sourceFile
                    + ":" + e.lineNumber);
});
"""


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    context.set_default_timeout(15000)
    context.add_init_script(WATCH_VIOLATIONS)
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    page.on(
        "console",
        lambda msg: "Content Security Policy" in msg.text and page.errors.append(msg.text),
    )
    yield page
    context.close()


def visit(page, url):
    response = page.goto(url)
    page.wait_for_load_state("networkidle")
    return response


def clean(page, name):
    violations = page.evaluate("window.__csp")
    if violations or page.errors:
        screenshot(page, f"csp-{name}")
    assert violations == [], (name, violations)
    assert page.errors == [], (name, page.errors)


def test_login_signup_admin_browsable_api_and_docs_work_under_the_strict_policy(server, page):
    def setup():
        admin = make_user("csp-admin")
        admin.is_staff = admin.is_superuser = True
        admin.save(update_fields=["is_staff", "is_superuser"])
        room = factories.make_room(admin, name="CSP room")
        factories.send(room, admin, "hello under CSP")
        return admin, room

    admin, room = in_thread(setup)
    base = server.http_url

    for path in ("/login/", "/signup/"):
        response = visit(page, base + path)
        assert response.headers["content-security-policy"] == STRICT_CSP, path
        expect(page.get_by_label("Username")).to_be_visible()
        clean(page, path.strip("/"))

    # The admin: log in through its own form, then a changelist with its filters and search
    # (admin JS: actions, filters), a change page and an add form with a scripted widget.
    response = visit(page, base + "/admin/login/")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    page.get_by_label("Username").fill(admin.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#site-name")).to_be_visible()
    clean(page, "admin-index")
    visit(page, base + "/admin/messaging/message/")
    expect(page.locator("#result_list")).to_contain_text("hello under CSP")
    page.locator("#action-toggle").check()  # the actions script runs: the counter follows
    expect(page.locator(".action-counter")).to_contain_text("1 of 1 selected")
    clean(page, "admin-messages")
    visit(page, base + f"/admin/rooms/room/{room.pk}/change/")
    expect(page.locator("#content")).to_contain_text("CSP room")
    clean(page, "admin-room-change")
    visit(page, base + "/admin/auth/group/add/")  # SelectFilter2 builds the two-box widget
    expect(page.locator("#id_permissions_from")).to_be_visible()
    clean(page, "admin-group-add")
    visit(page, base + "/admin/events/event/?room=" + str(room.pk))
    expect(page.locator("#result_list")).to_be_visible()
    clean(page, "admin-events")

    # The browsable API (the admin's session logs it in too): a list, and its POST form.
    response = visit(page, base + "/api/rooms/")
    assert response.headers["content-security-policy"] == STRICT_CSP
    expect(page.locator(".response-info")).to_contain_text("CSP room")
    expect(page.locator("form").first).to_be_visible()
    clean(page, "browsable-api")

    # The API docs: Swagger UI renders the operations from the schema.
    response = visit(page, base + "/api/docs/")
    assert response.headers["content-security-policy"] == STRICT_CSP
    expect(
        page.locator(".opblock-summary-path").filter(has_text=re.compile(r"^/api/rooms/$"))
    ).to_have_count(2, timeout=20000)  # GET, POST
    page.locator(".opblock-summary-path", has_text=re.compile(r"^/api/me/$")).first.click()
    expect(page.locator(".opblock-body").first).to_be_visible()
    clean(page, "api-docs")
