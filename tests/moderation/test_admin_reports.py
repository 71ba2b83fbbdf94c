"""The report queue and review page in the admin, and account deactivation, as a moderator."""

from datetime import timedelta

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.test import Client
from django.utils import timezone

from apps.core.errors import ServiceError
from apps.events.models import Event
from apps.messaging import services as messaging
from apps.messaging.models import Message
from apps.moderation import services as moderation
from apps.moderation.models import Report
from apps.rooms.models import Membership, ModerationAction
from tests import factories

pytestmark = pytest.mark.django_db
QUEUE = "/admin/moderation/report/"


@pytest.fixture
def setting(db):
    owner, troll, reporter = (factories.make_user() for _ in range(3))
    room = factories.make_room(owner, members=[troll, reporter])
    for i in range(25):
        factories.send(room, owner, f"before {i}")
    reported = Message.objects.get(
        pk=factories.send(room, troll, "the offending words").envelope["data"]["id"]
    )
    for i in range(8):
        factories.send(room, owner, f"after {i}")
    moderator = factories.make_moderator(username=f"mod{owner.pk}")
    client = Client()
    client.force_login(moderator)
    return dict(
        room=room,
        troll=troll,
        reporter=reporter,
        reported=reported,
        moderator=moderator,
        client=client,
    )


def report_of(setting, message=None):
    return moderation.report_create(
        message=message or setting["reported"],
        reporter=setting["reporter"],
        category="abuse",
        reason="insulting",
    )[0]


def test_the_queue_lists_open_reports_first(setting):
    older_open = report_of(setting)
    other = Message.objects.get(
        pk=factories.send(setting["room"], setting["troll"], "again").envelope["data"]["id"]
    )
    newer_handled = report_of(setting, other)
    moderation.report_resolve(report=newer_handled, actor=setting["moderator"], action="dismiss")
    third = Message.objects.get(
        pk=factories.send(setting["room"], setting["troll"], "more").envelope["data"]["id"]
    )
    newest_open = report_of(setting, third)
    page = setting["client"].get(QUEUE)
    assert page.status_code == 200
    rows = [r.pk for r in page.context["cl"].result_list]
    assert rows == [newest_open.pk, older_open.pk, newer_handled.pk]
    by_status = setting["client"].get(QUEUE + "?status__exact=open")
    assert [r.pk for r in by_status.context["cl"].result_list] == [newest_open.pk, older_open.pk]


def test_the_review_page_shows_the_body_as_reported_and_the_log_around_it(setting):
    report = report_of(setting)
    messaging.message_edit(message=setting["reported"], actor=setting["troll"], body="nicer")
    messaging.message_delete(message=setting["reported"], actor=setting["troll"])
    page = setting["client"].get(f"{QUEUE}{report.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "the offending words" in html  # the copy, though the message is edited and deleted
    log = page.context["log"]
    seq = setting["reported"].seq
    assert [row["seq"] for row in log] == list(range(seq - 20, seq + 6))
    [reported_row] = [row for row in log if row["reported"]]
    assert reported_row["edited"] and reported_row["deleted"]
    assert "deleted at" in html and "Delete the message" in html


def test_deleting_from_the_review_page_goes_through_the_service(setting):
    report = report_of(setting)
    answer = setting["client"].post(
        f"{QUEUE}{report.pk}/change/", {"action": "delete", "reason": "harassment"}
    )
    assert answer.status_code == 302
    report.refresh_from_db()
    setting["reported"].refresh_from_db()
    assert report.status == "resolved" and report.resolved_by == setting["moderator"]
    assert report.action == "delete" and setting["reported"].is_deleted
    deleted = Event.objects.filter(room=setting["room"], type="message.deleted").get()
    assert deleted.envelope["actor"]["id"] == setting["moderator"].pk
    log = ModerationAction.objects.get(action="delete_message")
    assert (log.actor, log.reason, log.target_message_id) == (
        setting["moderator"],
        "harassment",
        setting["reported"].pk,
    )
    again = setting["client"].get(f"{QUEUE}{report.pk}/change/")
    assert b"Delete the message" not in again.content and b"harassment" in again.content


def test_mute_from_the_review_page_needs_a_duration_and_changes_nothing_without(setting):
    report = report_of(setting)
    url = f"{QUEUE}{report.pk}/change/"
    refused = setting["client"].post(url, {"action": "mute", "reason": "cool off"})
    assert refused.status_code == 200  # the page again, with the refusal
    report.refresh_from_db()
    assert report.status == "open"
    done = setting["client"].post(url, {"action": "mute", "reason": "cool off", "duration": "3600"})
    assert done.status_code == 302
    membership = Membership.objects.get(room=setting["room"], user=setting["troll"])
    assert membership.is_muted()
    assert membership.muted_until < timezone.now() + timedelta(hours=1, minutes=1)


def test_moderators_deactivate_an_account_site_wide_with_a_reason(setting):
    troll = setting["troll"]
    url = "/admin/moderation/account/"
    data = {"action": "deactivate_accounts", ACTION_CHECKBOX_NAME: [troll.pk]}
    form = setting["client"].post(url, data)
    assert form.status_code == 200 and b'name="apply"' in form.content
    done = setting["client"].post(url, {**data, "apply": "1", "reason": "spam bot"})
    assert done.status_code == 302
    troll.refresh_from_db()
    assert not troll.is_active
    log = ModerationAction.objects.get(action="deactivate")
    assert (log.room, log.actor, log.target_user, log.reason) == (
        None,
        setting["moderator"],
        troll,
        "spam bot",
    )
    token = factories.make_token(troll)
    assert (
        factories.api_client().get("/api/me/", HTTP_AUTHORIZATION=f"Token {token}").status_code
        == 401
    )


def test_moderators_cannot_deactivate_staff_or_themselves(setting):
    other_mod = factories.make_moderator()
    for target in (other_mod, setting["moderator"]):
        with pytest.raises(ServiceError):
            moderation.user_deactivate(user=target, actor=setting["moderator"], reason="x")
    with pytest.raises(ServiceError):  # and members cannot deactivate anyone
        moderation.user_deactivate(user=setting["troll"], actor=setting["reporter"])
    assert not ModerationAction.objects.filter(action="deactivate").exists()
    assert Report.objects.count() == 0
