"""Notifications in the web client (PROTOCOL §9), in headless Chromium against a real server
and Celery worker: the mention badge in the room list, the notifications list, the per-room
level in the room menu, the browser's Notification API while the page is hidden."""

import re

import pytest
from playwright.sync_api import expect

from apps.notifications.models import RoomLevel
from tests import factories

from .conftest import in_thread, make_user, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.services, pytest.mark.django_db(transaction=True)]

# The page thinks it is hidden, and the Notification API records what it is asked to show.
HIDDEN_WITH_NOTIFICATIONS = """
Object.defineProperty(document, "visibilityState", { get: () => "hidden" });
window.__shown = [];
window.Notification = class {
  static permission = "granted";
  static requestPermission() { return Promise.resolve("granted"); }
  constructor(title, options) { window.__shown.push({ title, body: options.body, tag: options.tag }); }
  close() {}
};
"""


def open_room(page, name):
    page.locator("#room-list").get_by_role("button", name=name).click()
    expect(page.locator("#room-title")).to_have_text(name)


def send(page, text):
    box = page.get_by_role("textbox", name="Message", exact=True)
    box.fill(text)
    box.press("Enter")


def mention_badge(page, room):
    return page.locator("#room-list li", has_text=room).locator(".badge.mentions")


def test_a_mention_badge_appears_live_and_clears_when_the_room_is_read(
    server, celery_worker, open_page
):
    def setup():
        alice, bob = make_user("alice"), make_user("bob")
        factories.make_room(alice, name="General", members=[bob])
        factories.make_room(alice, name="Random", members=[bob])
        return alice, bob

    alice, bob = in_thread(setup)
    a = open_page(server, alice)
    b = open_page(server, bob)
    open_room(a, "Random")
    open_room(b, "General")  # bob looks elsewhere: Random is not open on his page
    send(a, "hey @bob, look at this")
    send(a, "and a plain message")
    badge = mention_badge(b, "Random")
    expect(badge).to_have_text("@1", timeout=20000)
    expect(badge).to_have_attribute("aria-label", "1 mention")
    expect(
        b.locator("#room-list li", has_text="Random").locator(".badge:not(.mentions)")
    ).to_have_text("2")
    # The notifications list has it; it opens the room.
    expect(b.locator("#notifications-badge")).to_have_text("1")
    b.get_by_label("Notifications", exact=True).click()
    item = b.locator("#notification-list li").first
    expect(item).to_contain_text("alice mentioned you in Random")
    expect(item).to_contain_text("hey @bob, look at this")
    screenshot(b, "notifications-list")
    item.get_by_role("button").click()
    expect(b.locator("#room-title")).to_have_text("Random")
    # Read: the badge goes (on the open room, and after moving to another one).
    open_room(b, "General")
    expect(mention_badge(b, "Random")).to_have_count(0)
    expect(b.locator("#notifications-badge")).to_be_hidden()
    # @room from alice: the badge comes back, and goes when bob reads the room.
    send(a, "@room meeting now")
    expect(mention_badge(b, "Random")).to_have_text("@1", timeout=20000)
    open_room(b, "Random")
    open_room(b, "General")
    expect(mention_badge(b, "Random")).to_have_count(0)
    # The server agrees: the rooms list counts nothing left.
    rooms = in_thread(lambda: factories.api_client(bob).get("/api/rooms/?joined=true").json())
    assert {r["name"]: r["mentions"] for r in rooms["results"]} == {"General": 0, "Random": 0}
    assert a.errors == [] and b.errors == []


def test_the_room_menu_sets_the_level_and_hidden_pages_notify_the_desktop(
    server, celery_worker, open_page, browser
):
    def setup():
        alice, bob = make_user("alice"), make_user("bob")
        factories.make_room(alice, name="General", members=[bob])
        return alice, bob

    alice, bob = in_thread(setup)
    a = open_page(server, alice)
    b = open_page(server, bob)
    open_room(b, "General")
    level = b.get_by_label("Notify me")
    expect(level).to_have_value("mentions")
    level.select_option("all")
    expect(level).to_have_value("all")

    def stored():
        return RoomLevel.objects.filter(user=bob).values_list("level", flat=True).first()

    for _ in range(50):
        if in_thread(stored) == "all":
            break
        b.wait_for_timeout(100)
    assert in_thread(stored) == "all"
    b.reload()
    open_room(b, "General")
    expect(b.get_by_label("Notify me")).to_have_value("all")

    # A hidden page of bob's, allowed to notify: every message (level all), mentions named.
    b.context.add_init_script(HIDDEN_WITH_NOTIFICATIONS)
    hidden = b.context.new_page()
    hidden_errors = []
    hidden.on("pageerror", lambda exc: hidden_errors.append(str(exc)))
    hidden.goto(server.http_url + "/")
    expect(hidden.locator("body")).to_have_attribute("data-connection", "online", timeout=20000)
    open_room(a, "General")
    send(a, "just saying")
    send(a, "@bob are you there")
    for _ in range(200):  # (wait_for_function evaluates a string: the page's CSP forbids it)
        shown = hidden.evaluate("window.__shown")
        if any("mentioned you" in n["title"] for n in shown):
            break
        hidden.wait_for_timeout(100)
    titles = [n["title"] for n in shown]
    assert "alice in General" in titles, shown
    assert any(re.fullmatch(r"alice mentioned you in General", t) for t in titles), shown
    assert any(n["body"] == "just saying" for n in shown)
    # Level none: nothing notifies, not even a mention.
    b.get_by_label("Notify me").select_option("none")
    for _ in range(50):
        if in_thread(stored) == "none":
            break
        b.wait_for_timeout(100)
    assert in_thread(stored) == "none"
    hidden.reload()  # the level is read with the rooms list
    expect(hidden.locator("body")).to_have_attribute("data-connection", "online", timeout=20000)
    send(a, "still quiet @bob")
    send(a, "@alice a marker")  # bob's level none: only plain messages reach his page
    expect(b.locator("#messages .body", has_text="@alice a marker")).to_have_count(1)
    hidden.wait_for_timeout(2000)  # time for a notification.created, were one made
    assert hidden.evaluate("window.__shown") == []
    assert a.errors == [] and b.errors == [] and hidden_errors == []
