"""The web client's search box and thread panel in headless Chromium (PROTOCOL §8)."""

import re

import pytest
from playwright.sync_api import expect

from tests import factories

from .conftest import in_thread, make_user, screenshot
from .test_browser import composer, message, open_room

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_search_and_jump_to_an_old_message(server, open_page):
    def setup():
        alice = make_user("alice")
        room = factories.make_room(alice, name="General")
        factories.make_room(alice, name="Random")
        for i in range(120):
            body = "the <b>zebra</b> crossing is here" if i == 7 else f"filler {i:03d}"
            factories.send(room, alice, body)
        mallory = make_user("mallory")
        secret = factories.make_room(mallory, name="Hidden", kind="private")
        factories.send(secret, mallory, "zebra in a private room")
        return alice

    alice = in_thread(setup)
    page = open_page(server, alice)
    open_room(page, "Random")
    page.get_by_role("searchbox", name="Search messages").fill('"zebra crossing"')
    page.get_by_role("button", name="Search", exact=True).click()
    hits = page.locator("#search-results > li")
    expect(hits).to_have_count(1)  # not the private room's message
    expect(hits.first.locator("mark")).to_have_text(["zebra", "crossing"])
    assert page.locator("#search-results b").count() == 0  # the body's markup is text
    hits.first.get_by_role("button").click()
    expect(page.locator("#room-title")).to_have_text("General")
    target = message(page, "the <b>zebra</b> crossing is here")
    expect(target).to_have_class(re.compile("jumped"))
    expect(target).to_be_in_viewport()
    # The history around it: the messages before and after, not the newest page.
    expect(message(page, "filler 006")).to_have_count(1)
    expect(message(page, "filler 119")).to_have_count(0)
    screenshot(page, "search-jump")
    page.get_by_role("button", name="Show the latest messages").click()
    expect(message(page, "filler 119")).to_have_count(1)
    assert not page.errors


def test_a_thread_conversation_with_counts_updating_live(server, open_page):
    def setup():
        alice, bob = make_user("alice"), make_user("bob")
        factories.make_room(alice, name="General", members=[bob])
        return alice, bob

    alice, bob = in_thread(setup)
    a = open_page(server, alice)
    b = open_page(server, bob)
    open_room(a, "General")
    open_room(b, "General")
    composer(a).fill("Shall we ship on Friday?")
    composer(a).press("Enter")
    root_on_b = message(b, "Shall we ship on Friday?")
    expect(root_on_b).to_have_count(1)

    # Bob opens the thread from the message and replies in it.
    root_on_b.get_by_role("button", name="Reply in thread").click()
    expect(b.locator("#thread-panel")).to_be_visible()
    b.get_by_role("textbox", name="Reply in thread").fill("Friday works for me")
    b.locator("#thread-send").click()
    expect(b.locator("#thread-replies > li .body")).to_have_text(["Friday works for me"])

    # Alice sees the count on the root change live, and the thread marked unread.
    root_on_a = message(a, "Shall we ship on Friday?")
    expect(root_on_a.locator(".thread-link")).to_have_text(re.compile(r"^1 reply"))
    expect(a.locator("#threads-badge")).to_have_text("1")
    expect(a.locator("#thread-list li.unread")).to_have_count(1)
    root_on_a.locator(".thread-link").click()
    expect(a.locator("#thread-replies > li .body")).to_have_text(["Friday works for me"])
    expect(a.locator("#threads-badge")).to_be_hidden()  # opening it read it
    a.get_by_role("textbox", name="Reply in thread").fill("Great, Friday it is")
    a.get_by_role("textbox", name="Reply in thread").press("Enter")

    # Bob's open thread gets the reply, and both roots say 2 replies.
    expect(b.locator("#thread-replies > li .body")).to_have_text(
        ["Friday works for me", "Great, Friday it is"]
    )
    expect(b.locator("#thread-count")).to_have_text("2 replies")
    expect(root_on_b.locator(".thread-link")).to_have_text(re.compile(r"^2 replies"))
    expect(root_on_a.locator(".thread-link")).to_have_text(re.compile(r"^2 replies"))
    screenshot(b, "thread-panel")
    assert not a.errors and not b.errors
