"""REST for notifications and their admin; the outbox figures in /readyz and the event admin."""

import pytest
from django.test import Client

from apps.events import handlers
from apps.events.models import Event, Outbox
from apps.notifications.handlers import MentionNotifications
from apps.notifications.models import Notification
from tests import factories

pytestmark = pytest.mark.django_db


def mentions(n, *, of, by=None):
    """n handled @mentions of `of`, as the Kafka handler makes them."""
    by = by or factories.make_user()
    room = factories.make_room(by, members=[of])
    for i in range(n):
        envelope = factories.send(room, by, body=f"@{of.username} #{i}").envelope
        handlers.process("notifications", MentionNotifications(), envelope)
    return room


def test_list_is_newest_first_paged_and_filters_unread(user):
    room = mentions(3, of=user)
    api = factories.api_client(user)
    body = api.get("/api/notifications/?limit=2").json()
    assert [n["excerpt"] for n in body["results"]] == [
        f"@{user.username} #2",
        f"@{user.username} #1",
    ]
    assert body["unread"] == 3 and body["next"]
    first = body["results"][0]
    assert first["room"] == room.pk and first["kind"] == "mention" and first["read"] is False
    rest = api.get(body["next"]).json()
    assert [n["excerpt"] for n in rest["results"]] == [f"@{user.username} #0"]
    assert rest["next"] is None

    assert api.post(f"/api/notifications/{first['id']}/read/").json()["read"] is True
    unread = api.get("/api/notifications/?unread=true").json()
    assert len(unread["results"]) == 2 and unread["unread"] == 2


def test_mark_several_or_all_read(user):
    mentions(3, of=user)
    api = factories.api_client(user)
    ids = [n["id"] for n in api.get("/api/notifications/").json()["results"]]
    assert api.post("/api/notifications/read/", {"ids": ids[:2]}, format="json").json() == {
        "marked": 2
    }
    assert api.post("/api/notifications/read/", {"all": True}, format="json").json() == {
        "marked": 1
    }
    assert not Notification.objects.unread().exists()


def test_someone_elses_notification_is_not_found_and_not_changed(user, other_user):
    mentions(1, of=user)
    note = Notification.objects.get()
    response = factories.api_client(other_user).post(f"/api/notifications/{note.pk}/read/")
    assert response.status_code == 404 and response.json()["code"] == "not_found"
    marked = factories.api_client(other_user).post(
        "/api/notifications/read/", {"ids": [note.pk]}, format="json"
    )
    assert marked.json() == {"marked": 0}
    note.refresh_from_db()
    assert note.read_at is None
    assert factories.api_client(other_user).get("/api/notifications/").json()["results"] == []


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"ids": []},
        {"ids": ["x"]},
        {"ids": [True]},
        [1, 2],
        {"ids": list(range(501))},
        {"ids": [0]},
        {"ids": [-5]},
        {"ids": [2**63]},
        {"ids": [-(10**37)]},
    ],
)
def test_bad_mark_read_input_is_a_clear_error(user, payload):
    response = factories.api_client(user).post("/api/notifications/read/", payload, format="json")
    assert response.status_code == 400 and response.json()["code"] == "invalid"


@pytest.mark.parametrize("query", ["limit=0", "limit=abc", "before=-1", "unread=maybe"])
def test_bad_list_parameters_are_a_clear_error(user, query):
    response = factories.api_client(user).get(f"/api/notifications/?{query}")
    assert response.status_code == 400 and response.json()["code"] == "invalid"


def test_anonymous_gets_401():
    assert Client().get("/api/notifications/").status_code == 401


def test_readyz_reports_the_outbox_backlog(room):
    pending = Event.objects.unpublished().count()
    assert pending >= 2  # room.created and member.joined, never published in this test
    outbox = Client().get("/readyz").json()["checks"]["outbox"]
    assert outbox["pending"] == pending and outbox["oldest_pending_age_seconds"] >= 0


def test_event_admin_shows_outbox_lag_and_filters_by_room_type_and_state(admin_client, room, user):
    other = factories.make_room(user)
    Outbox.objects.filter(room_id=other.pk).update(
        last_error="KafkaTimeoutError: boom", publish_attempts=3
    )
    page = admin_client.get("/admin/events/event/")
    html = page.content.decode()
    assert page.status_code == 200 and 'id="outbox-status"' in html
    assert f'<span id="outbox-pending">{Event.objects.unpublished().count()}</span>' in html

    by_room = admin_client.get(f"/admin/events/event/?room={room.pk}&type=member.joined")
    assert list(by_room.context["cl"].result_list) == list(
        Event.objects.filter(room=room, type="member.joined")
    )
    failing = admin_client.get("/admin/events/event/?state=failing")
    rows = list(failing.context["cl"].result_list)
    assert rows and {e.room_id for e in rows} == {other.pk}
    assert "KafkaTimeoutError: boom" in failing.content.decode()
    detail = admin_client.get(f"/admin/events/event/{rows[0].pk}/change/")
    assert detail.status_code == 200 and rows[0].envelope["id"] in detail.content.decode()
    assert "KafkaTimeoutError: boom" in detail.content.decode()
    # Published: out of the outbox, so the pending filter no longer shows the room's events.
    Event.objects.filter(room=room).mark_published()
    published = admin_client.get("/admin/events/event/?state=published")
    assert {e.room_id for e in published.context["cl"].result_list} == {room.pk}
    waiting = admin_client.get("/admin/events/event/?state=pending")
    assert {e.room_id for e in waiting.context["cl"].result_list} == {other.pk}
    shown = Event.objects.filter(room=room).first()
    assert admin_client.get(f"/admin/events/event/{shown.pk}/change/").status_code == 200
    # Sorted by the "published" column (the sixth), pending and published rows both listed.
    by_state = admin_client.get("/admin/events/event/?o=6")
    assert by_state.status_code == 200
    assert {e.room_id for e in by_state.context["cl"].result_list} >= {room.pk, other.pk}
    # Read-only: no add, no delete.
    assert admin_client.get("/admin/events/event/add/").status_code == 403


def test_notification_admin_lists_and_filters_unread(admin_client, user):
    mentions(2, of=user)
    Notification.objects.filter(pk=Notification.objects.first().pk).update(
        read_at="2026-01-01T00:00Z"
    )
    page = admin_client.get("/admin/notifications/notification/?read_at__isnull=True")
    assert page.status_code == 200 and len(page.context["cl"].result_list) == 1
