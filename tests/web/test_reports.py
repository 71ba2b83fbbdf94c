"""Reporting in the browser: a member reports a message from the chat page; a moderator sees it
live in the page's report list, reviews it in the admin queue with its context, deletes the
message with a reason from there; it disappears from the reporter's open page and the report
shows as resolved by that moderator."""

import re

import pytest
from playwright.sync_api import expect

from apps.moderation.models import Report
from tests import factories

from .conftest import admin_login, in_thread, make_user, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def message(page, text):
    return page.locator("#messages > li").filter(
        has=page.locator(".body", has_text=re.compile("^" + re.escape(text) + "$"))
    )


def test_report_reviewed_and_acted_on_in_the_admin(server, open_page, browser):
    def setup():
        owner, troll, reporter = make_user("owner"), make_user("troll"), make_user("reporter")
        moderator = make_user("mod", moderator=True)
        room = factories.make_room(owner, name="General", members=[troll, reporter])
        for i in range(3):
            factories.send(room, owner, f"context {i}")
        factories.send(room, troll, "you are all idiots")
        factories.send(room, owner, "please be nice")
        return reporter, moderator

    reporter, moderator = in_thread(setup)
    page = open_page(server, reporter)
    watcher = open_page(server, moderator)  # the moderator's chat page: the report list
    page.locator("#room-list").get_by_role("button", name="General").click()
    offending = message(page, "you are all idiots")
    expect(offending).to_have_count(1)
    expect(watcher.locator("#reports-panel")).to_be_visible()
    expect(watcher.locator("#report-list")).to_contain_text("No open reports")

    offending.hover()
    offending.locator('[data-action="report"]').click()
    offending.get_by_label("Report as").select_option("abuse")
    offending.get_by_label("Reason").fill("insults everyone")
    offending.get_by_role("button", name="Send report").click()
    expect(page.locator("#room-error")).to_contain_text("the moderators have your report")
    # Live: report.created reaches the moderator's socket and the list refreshes.
    expect(watcher.locator("#report-list")).to_contain_text("you are all idiots")
    expect(watcher.locator("#reports-badge")).to_have_text("1")

    admin = browser.new_context()
    try:
        ap = admin.new_page()
        admin_login(ap, server, moderator.username, "/admin/moderation/report/")
        row = ap.locator("#result_list tbody tr").first
        expect(row).to_contain_text("you are all idiots")
        expect(row).to_contain_text("Open")
        row.locator("a").first.click()
        review = ap.locator("#report-review")
        expect(review.locator(".as-reported")).to_have_text("you are all idiots")
        expect(review.locator(".report-log tr.reported")).to_contain_text("you are all idiots")
        expect(review.locator(".report-log")).to_contain_text("context 0")
        expect(review.locator(".report-log")).to_contain_text("please be nice")
        ap.get_by_label("Reason").fill("insulting the room")
        ap.get_by_role("button", name="Delete the message").click()
        expect(ap.locator(".messagelist")).to_contain_text("done")
        first = ap.locator("#result_list tbody tr").first
        expect(first).to_contain_text("Resolved")
        expect(first).to_contain_text(moderator.username)
        first.locator("a").first.click()
        expect(ap.locator(".report-resolved-by")).to_contain_text(moderator.username)
        expect(ap.locator(".report-resolved-by")).to_contain_text("insulting the room")
        expect(ap.locator(".as-reported")).to_have_text("you are all idiots")  # kept
        expect(ap.locator(".report-log .mark.deleted").first).to_be_visible()
    except Exception:
        screenshot(ap, "report-admin")
        raise
    finally:
        admin.close()

    expect(
        page.locator("#messages .body", has_text="Message removed by a moderator")
    ).to_have_count(1)
    expect(message(page, "you are all idiots")).to_have_count(0)
    expect(watcher.locator("#report-list")).to_contain_text("No open reports", timeout=40000)
    report = in_thread(lambda: Report.objects.select_related("resolved_by").get())
    assert (report.status, report.action, report.resolved_by.username) == (
        "resolved",
        "delete",
        moderator.username,
    )
    assert page.errors == [] and watcher.errors == []


def test_a_room_owner_handles_a_report_from_the_chat_page(server, open_page):
    def setup():
        owner, troll, reporter = make_user("owner2"), make_user("troll2"), make_user("reporter2")
        room = factories.make_room(owner, name="Lounge", members=[troll, reporter])
        factories.send(room, troll, "spam spam spam")
        return owner, reporter

    owner, reporter = in_thread(setup)
    page = open_page(server, reporter)
    owners = open_page(server, owner)
    page.locator("#room-list").get_by_role("button", name="Lounge").click()
    offending = message(page, "spam spam spam")
    offending.hover()
    offending.locator('[data-action="report"]').click()
    offending.get_by_role("button", name="Send report").click()  # category: spam (the default)
    item = owners.locator("#report-list li").filter(has_text="spam spam spam")
    expect(item).to_have_count(1)
    expect(owners.locator("#reports-badge")).to_have_text("1")
    owners.locator("#reports-panel summary").click()
    expect(item.get_by_role("link", name="Review")).to_have_count(0)  # not staff: no admin
    item.get_by_role("button", name="Remove message").click()
    expect(owners.locator("#report-list")).to_contain_text("No open reports")
    expect(message(page, "spam spam spam")).to_have_count(0)
    expect(
        page.locator("#messages .body", has_text="Message removed by a moderator")
    ).to_have_count(1)
    report = in_thread(lambda: Report.objects.select_related("resolved_by").get())
    assert (report.status, report.resolved_by.username, report.category) == (
        "resolved",
        owner.username,
        "spam",
    )
    assert page.errors == [] and owners.errors == []
