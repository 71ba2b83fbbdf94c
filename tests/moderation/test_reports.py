"""Reports: a member reports a message they can read; moderators get report.created live, read
the report (with the body as reported, even after a deletion) and handle it through the usual
services; the copy of the body is erased REPORT_RETENTION_DAYS after the report is handled."""

from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.test import override_settings
from django.utils import timezone

from apps.core.errors import ServiceError
from apps.events.models import Event
from apps.messaging import services as messaging
from apps.messaging.models import Message
from apps.moderation import services as moderation
from apps.moderation.models import Report
from apps.moderation.tasks import erase_report_bodies
from apps.rooms import services as rooms
from apps.rooms.models import Membership, ModerationAction, Room
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def cast(db):
    """A room with its owner, a room moderator, a troublemaker, a reporter and an outsider."""
    owner, mod, troll, reporter, outsider = (factories.make_user() for _ in range(5))
    room = factories.make_room(owner, members=[mod, troll, reporter])
    rooms.member_set_role(room=room, actor=owner, user=mod, role="moderator")
    event = factories.send(room, troll, "buy cheap pills at spam.example")
    message = Message.objects.get(pk=event.envelope["data"]["id"])
    return dict(
        owner=owner,
        mod=mod,
        troll=troll,
        reporter=reporter,
        outsider=outsider,
        room=room,
        message=message,
    )


def report_url(message):
    return f"/api/messages/{message.pk}/report/"


def test_report_is_201_open_then_200_with_the_same_report(cast):
    client = factories.api_client(cast["reporter"])
    first = client.post(
        report_url(cast["message"]), {"category": "spam", "reason": "ads"}, format="json"
    )
    assert first.status_code == 201 and first.json() == {"id": first.json()["id"], "status": "open"}
    again = client.post(report_url(cast["message"]), {"category": "abuse"}, format="json")
    assert again.status_code == 200 and again.json() == first.json()
    report = Report.objects.get()
    assert (report.reporter, report.author, report.room, report.category, report.reason) == (
        cast["reporter"],
        cast["troll"],
        cast["room"],
        "spam",
        "ads",
    )
    assert report.body == "buy cheap pills at spam.example"
    assert report.message_seq == cast["message"].seq


@pytest.mark.parametrize(
    "body", [{"category": "nonsense"}, {}, {"category": "spam", "reason": "x" * 1001}]
)
def test_bad_report_input_is_invalid_and_creates_nothing(cast, body):
    answer = factories.api_client(cast["reporter"]).post(
        report_url(cast["message"]), body, format="json"
    )
    assert answer.status_code == 400 and answer.json()["code"] == "invalid"
    assert not Report.objects.exists() and not Event.objects.filter(type="report.created").exists()


def test_only_people_who_can_read_the_message_may_report_it(cast):
    private = factories.make_room(cast["owner"], kind=Room.Kind.PRIVATE)
    secret = Message.objects.get(
        pk=factories.send(private, cast["owner"], "s").envelope["data"]["id"]
    )
    outsider = factories.api_client(cast["outsider"])
    hidden = outsider.post(report_url(secret), {"category": "spam"}, format="json")
    missing = outsider.post("/api/messages/999999999/report/", {"category": "spam"}, format="json")
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json() == missing.json()
    own = factories.api_client(cast["troll"]).post(
        report_url(cast["message"]), {"category": "spam"}, format="json"
    )
    assert own.status_code == 400
    assert not Report.objects.exists()


def test_report_created_event_reaches_moderators_and_kafka_without_the_reporter(cast):
    site_mod = factories.make_moderator()
    report, created = moderation.report_create(
        message=cast["message"], reporter=cast["reporter"], category="abuse", reason="rude"
    )
    event = Event.objects.get(type="report.created")
    assert created and event.room_id == cast["room"].pk and event.seq is None
    assert event.envelope["actor"] is None
    assert event.envelope["data"] == {
        "report": {
            "id": report.pk,
            "message": cast["message"].pk,
            "room": cast["room"].pk,
            "category": "abuse",
            "reason": "rude",
        }
    }
    assert str(cast["reporter"].pk) not in str(event.envelope["data"])
    assert cast["reporter"].username not in str(event.envelope)
    ids = moderation.moderator_ids(cast["room"])
    assert set(ids) == {cast["owner"].pk, cast["mod"].pk, site_mod.pk}
    # Not in the room's history: the events page and replays read sequenced events only.
    page = factories.api_client(cast["reporter"]).get(f"/api/rooms/{cast['room'].pk}/events/")
    assert "report.created" not in {e["type"] for e in page.json()["results"]}
    from apps.events.publisher import KAFKA_TYPES

    assert "report.created" in KAFKA_TYPES


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_report_created_is_fanned_out_to_each_moderators_own_group(cast):
    import asyncio

    layer = get_channel_layer()
    groups = {f"user.{cast[name].pk}": name for name in ("owner", "mod", "reporter", "outsider")}

    async def listen():
        channel = await layer.new_channel()
        for group in groups:
            await layer.group_add(group, channel)
        return channel

    channel = async_to_sync(listen)()
    moderation.report_create(
        message=cast["message"], reporter=cast["reporter"], category="spam", reason=""
    )

    async def receive_all():
        got = []
        try:
            while True:
                message = await asyncio.wait_for(layer.receive(channel), 2)
                got += message["events"] if message["type"] == "chat.events" else [message]
        except TimeoutError:
            return got

    received = async_to_sync(receive_all)()
    assert sorted(groups[m["via"]] for m in received if m["event_type"] == "report.created") == [
        "mod",
        "owner",
    ]


def test_moderators_list_the_reports_of_rooms_they_moderate_only(cast):
    moderation.report_create(message=cast["message"], reporter=cast["reporter"], category="spam")
    other_room = factories.make_room(cast["outsider"], members=[cast["reporter"]])
    elsewhere = Message.objects.get(
        pk=factories.send(other_room, cast["outsider"], "x").envelope["data"]["id"]
    )
    moderation.report_create(message=elsewhere, reporter=cast["reporter"], category="other")
    as_mod = factories.api_client(cast["mod"]).get("/api/reports/?status=open")
    assert as_mod.status_code == 200
    [seen] = as_mod.json()["results"]
    assert seen["message"] == cast["message"].pk and seen["body"] == cast["message"].body
    assert seen["reporter"]["id"] == cast["reporter"].pk and seen["status"] == "open"
    site = factories.api_client(factories.make_moderator()).get("/api/reports/?status=open")
    assert len(site.json()["results"]) == 2
    member = factories.api_client(cast["reporter"]).get("/api/reports/")
    assert member.status_code == 200 and member.json()["results"] == []
    bad = factories.api_client(cast["mod"]).get("/api/reports/?status=bogus")
    assert bad.status_code == 400 and bad.json()["code"] == "invalid"


def test_the_body_as_reported_survives_the_authors_deletion(cast):
    report, _ = moderation.report_create(
        message=cast["message"], reporter=cast["reporter"], category="spam"
    )
    messaging.message_delete(message=cast["message"], actor=cast["troll"])
    report.refresh_from_db()
    assert report.body == "buy cheap pills at spam.example"
    listed = factories.api_client(cast["mod"]).get("/api/reports/").json()["results"]
    assert listed[0]["body"] == "buy cheap pills at spam.example"


@pytest.mark.parametrize("action", ["delete", "mute", "ban", "dismiss"])
def test_each_outcome_goes_through_its_service_resolves_and_is_logged(cast, action):
    report, _ = moderation.report_create(
        message=cast["message"], reporter=cast["reporter"], category="spam"
    )
    until = timezone.now() + timedelta(hours=1) if action == "mute" else None
    moderation.report_resolve(
        report=report, actor=cast["mod"], action=action, reason="enough", until=until
    )
    report.refresh_from_db()
    assert report.status == ("dismissed" if action == "dismiss" else "resolved")
    assert (report.resolved_by, report.action, report.resolution_reason) == (
        cast["mod"],
        action,
        "enough",
    )
    log = ModerationAction.objects.get(
        actor=cast["mod"],
        action={
            "delete": "delete_message",
            "mute": "mute",
            "ban": "ban",
            "dismiss": "dismiss_report",
        }[action],
    )
    assert log.reason == "enough" and log.target_user == cast["troll"]
    membership = Membership.objects.get(room=cast["room"], user=cast["troll"])
    cast["message"].refresh_from_db()
    assert cast["message"].is_deleted == (action == "delete")
    assert membership.is_muted() == (action == "mute")
    assert membership.is_banned() == (action == "ban")
    with pytest.raises(ServiceError):  # handled once
        moderation.report_resolve(report=report, actor=cast["mod"], action="dismiss")


def test_a_refused_outcome_changes_nothing(cast):
    report, _ = moderation.report_create(
        message=cast["message"], reporter=cast["reporter"], category="spam"
    )
    with pytest.raises(ServiceError):
        moderation.report_resolve(report=report, actor=cast["reporter"], action="delete")
    with pytest.raises(ServiceError):  # the owner cannot be banned by a moderator
        owner_msg = Message.objects.get(
            pk=factories.send(cast["room"], cast["owner"], "o").envelope["data"]["id"]
        )
        on_owner, _ = moderation.report_create(
            message=owner_msg, reporter=cast["reporter"], category="abuse"
        )
        moderation.report_resolve(report=on_owner, actor=cast["mod"], action="ban")
    assert set(Report.objects.values_list("status", flat=True)) == {"open"}
    assert not cast["message"].__class__.objects.filter(deleted_at__isnull=False).exists()


@override_settings(REPORT_RETENTION_DAYS=30)
def test_the_reported_body_is_erased_after_the_retention_of_handled_reports(cast):
    handled, _ = moderation.report_create(
        message=cast["message"], reporter=cast["reporter"], category="spam"
    )
    moderation.report_resolve(report=handled, actor=cast["mod"], action="dismiss")
    second = Message.objects.get(
        pk=factories.send(cast["room"], cast["troll"], "more spam").envelope["data"]["id"]
    )
    still_open, _ = moderation.report_create(
        message=second, reporter=cast["reporter"], category="spam"
    )
    Report.objects.filter(pk=still_open.pk).update(created_at=timezone.now() - timedelta(days=90))
    assert erase_report_bodies() == 0  # handled just now: kept
    Report.objects.filter(pk=handled.pk).update(resolved_at=timezone.now() - timedelta(days=31))
    assert erase_report_bodies() == 1
    handled.refresh_from_db()
    still_open.refresh_from_db()
    assert handled.body == "" and handled.body_erased_at is not None
    assert still_open.body == "more spam"  # open reports keep their copy


@override_settings(
    CHAT_RATE_LIMIT_MESSAGES=50,
    CHAT_RATE_LIMIT_PER_SECOND=0.01,
    RATE_LIMIT_REPORT=2,
    RATE_LIMIT_REPORT_PER_SECOND=0.01,
)
def test_reports_take_from_their_own_small_budget(cast):
    messages = [
        Message.objects.get(
            pk=factories.send(cast["room"], cast["troll"], f"m{i}").envelope["data"]["id"]
        )
        for i in range(3)
    ]
    client = factories.api_client(cast["reporter"])
    answers = [client.post(report_url(m), {"category": "spam"}, format="json") for m in messages]
    assert [a.status_code for a in answers] == [201, 201, 429]
    assert answers[2].json()["code"] == "rate_limited" and "Retry-After" in answers[2]
    assert Report.objects.count() == 2


def test_room_moderators_handle_reports_over_rest(cast):
    report, _ = moderation.report_create(
        message=cast["message"], reporter=cast["reporter"], category="spam"
    )
    url = f"/api/reports/{report.pk}/resolve/"
    as_member = factories.api_client(cast["reporter"]).post(
        url, {"action": "dismiss"}, format="json"
    )
    assert as_member.status_code == 404  # not theirs to see
    bad = factories.api_client(cast["mod"]).post(url, {"action": "explode"}, format="json")
    assert bad.status_code == 400
    done = factories.api_client(cast["mod"]).post(
        url, {"action": "delete", "reason": "spam"}, format="json"
    )
    assert done.status_code == 200
    body = done.json()
    assert (body["status"], body["action"], body["resolved_by"]["id"]) == (
        "resolved",
        "delete",
        cast["mod"].pk,
    )
    cast["message"].refresh_from_db()
    assert cast["message"].is_deleted
    again = factories.api_client(cast["mod"]).post(url, {"action": "dismiss"}, format="json")
    assert again.status_code == 400 and again.json()["code"] == "invalid"


@pytest.mark.kafka
@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_report_created_reaches_kafka_keyed_by_room_without_the_reporter(cast, celery_worker):
    from tests.events.kafka_support import read_topic, wait_for

    report, _ = moderation.report_create(
        message=cast["message"], reporter=cast["reporter"], category="abuse", reason="rude"
    )
    row = Event.objects.get(type="report.created")
    wait_for(
        lambda: not Event.objects.unpublished().exists(),
        timeout=60,
        message="the worker to publish the report",
    )
    [record] = [r for r in read_topic(want_ids={str(row.pk)}) if r.envelope["id"] == str(row.pk)]
    assert record.key == str(cast["room"].pk).encode()
    assert record.headers == {"event_type": "report.created", "event_id": str(row.pk)}
    assert record.envelope["data"]["report"]["id"] == report.pk
    assert record.envelope["actor"] is None
    assert cast["reporter"].username not in str(record.envelope)
