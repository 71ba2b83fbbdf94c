"""The API token page in headless Chromium against a real server: create a read token (its
secret shown once, usable at once), see it listed, revoke it — under the strict CSP."""

import json
import re
import urllib.error
import urllib.request

import pytest
from playwright.sync_api import expect

from apps.users.models import ApiToken

from .conftest import in_thread, make_user

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _me(server, key):
    request = urllib.request.Request(
        server.http_url + "/api/me/", headers={"Authorization": f"Token {key}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, None


def test_create_use_and_revoke_a_token(server, open_page):
    user = in_thread(make_user, "tokenuser")
    page = open_page(server, user)
    violations = []
    page.on("console", lambda m: "Content Security Policy" in m.text and violations.append(m.text))
    page.locator("#account-menu summary").click()
    page.get_by_role("link", name="API tokens").click()
    page.wait_for_url(server.http_url + "/tokens/")
    expect(page.locator("#token-empty")).to_be_visible()

    page.get_by_label("Name").fill("backup script")
    page.get_by_label("Read only").check()
    page.get_by_label("Expires").select_option("7")
    page.get_by_role("button", name="Create token").click()
    secret = page.locator("#token-secret-value")
    expect(secret).to_have_text(re.compile(r"^chat_[0-9a-f]{12}_"))
    key = secret.inner_text()
    row = page.locator("#token-list tr", has_text="backup script")
    expect(row).to_contain_text("read")
    assert "write" not in row.inner_text()
    status, me = _me(server, key)
    assert status == 200 and me["username"] == "tokenuser"
    stored = in_thread(lambda: list(ApiToken.objects.values_list("scopes", "expires_at")))
    assert stored[0][0] == ["read"] and stored[0][1] is not None
    # Shown once: gone when dismissed, and not on the page after a reload.
    page.get_by_role("button", name="Done").click()
    expect(page.locator("#token-secret")).to_be_hidden()
    page.reload()
    expect(row).to_be_visible()
    assert key not in page.content()

    page.on("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Revoke").click()
    expect(row).to_have_count(0)
    assert _me(server, key)[0] == 401
    assert not page.errors and not violations, (page.errors, violations)
