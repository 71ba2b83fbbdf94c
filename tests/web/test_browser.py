"""The web client in headless Chromium against a real daphne server."""

import pytest

from tests import factories

from .conftest import in_thread, make_user, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_smoke(server, open_page):
    def setup():
        alice = make_user("alice")
        room = factories.make_room(alice, name="General")
        factories.send(room, alice, "hello <b>world</b>")
        return alice
    alice = in_thread(setup)
    page = open_page(server, alice)
    page.get_by_role("button", name="General").click()
    page.wait_for_selector("#messages li")
    screenshot(page, "smoke")
