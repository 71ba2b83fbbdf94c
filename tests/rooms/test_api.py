"""REST for rooms, members and moderation, and the room event log."""

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.events.models import Event
from apps.rooms import services
from apps.rooms.models import Membership, Room
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def as_user(user):
    return factories.api_client(user)


@pytest.fixture
def as_other(other_user):
    return factories.api_client(other_user)


def test_create_public_and_private_rooms_and_list_them_with_membership(as_user, as_other):
    public = as_user.post("/api/rooms/", {"name": "Lobby", "topic": "hi"}, format="json")
    private = as_user.post("/api/rooms/", {"name": "Staff", "kind": "private"}, format="json")
    assert public.status_code == private.status_code == 201
    assert public.json()["membership"]["role"] == "owner"
    assert public.json()["kind"] == "public" and private.json()["kind"] == "private"
    mine = {r["name"] for r in as_user.get("/api/rooms/?joined=true").json()["results"]}
    assert mine == {"Lobby", "Staff"}
    theirs = as_other.get("/api/rooms/").json()["results"]
    assert [r["name"] for r in theirs] == ["Lobby"]
    assert theirs[0]["membership"] is None and theirs[0]["unread"] == 0


def test_room_list_shows_unread_counts_and_read_clears_them(room, user, other_user, as_other):
    as_other.post(f"/api/rooms/{room.pk}/join/")
    for i in range(3):
        factories.send(room, user, f"m{i}")
    listed = as_other.get("/api/rooms/?joined=1").json()["results"]
    assert [(r["id"], r["unread"]) for r in listed] == [(room.pk, 3)]
    last_seq = listed[0]["last_seq"]
    response = as_other.post(f"/api/rooms/{room.pk}/read/", {"seq": last_seq - 1}, format="json")
    assert response.json() == {"last_read_seq": last_seq - 1, "unread": 1}
    response = as_other.post(f"/api/rooms/{room.pk}/read/", {"seq": last_seq}, format="json")
    assert response.json() == {"last_read_seq": last_seq, "unread": 0}
    assert as_other.get(f"/api/rooms/{room.pk}/").json()["membership"]["last_read_seq"] == last_seq


def test_room_list_pages_by_id(user, as_user):
    ids = [factories.make_room(user).pk for _ in range(5)]
    first = as_user.get("/api/rooms/?limit=2").json()
    assert [r["id"] for r in first["results"]] == ids[:2]
    second = as_user.get(first["next"]).json()
    assert [r["id"] for r in second["results"]] == ids[2:4]
    assert as_user.get(second["next"]).json()["next"] is None


@pytest.mark.parametrize("query", ["limit=0", "limit=abc", "limit=100000", "after=-1"])
def test_bad_paging_parameters_are_a_400(as_user, query):
    response = as_user.get(f"/api/rooms/?{query}")
    assert response.status_code == 400 and response.json()["code"] == "invalid"


def test_direct_room_opens_once_per_pair(user, other_user, as_user, as_other):
    first = as_user.post("/api/rooms/direct/", {"user": other_user.pk}, format="json")
    again = as_other.post("/api/rooms/direct/", {"user": user.pk}, format="json")
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"] and first.json()["kind"] == "direct"
    assert as_user.post("/api/rooms/direct/", {"user": 10**9}, format="json").status_code == 404
    assert as_user.post("/api/rooms/direct/", {"user": user.pk}, format="json").status_code == 400


def test_patch_renames_and_delete_archives_for_the_owner_only(room, as_user, as_other):
    as_other.post(f"/api/rooms/{room.pk}/join/")
    refused = as_other.patch(f"/api/rooms/{room.pk}/", {"name": "Mine"}, format="json")
    assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
    renamed = as_user.patch(f"/api/rooms/{room.pk}/", {"topic": "new topic"}, format="json")
    assert renamed.status_code == 200 and renamed.json()["topic"] == "new topic"
    assert as_other.delete(f"/api/rooms/{room.pk}/").status_code == 403
    archived = as_user.delete(f"/api/rooms/{room.pk}/")
    assert archived.status_code == 200 and archived.json()["archived"] is True
    send = as_other.post(f"/api/rooms/{room.pk}/messages/", {"body": "late"}, format="json")
    assert send.status_code == 403 and "archived" in send.json()["detail"]


def test_join_leave_and_invite(user, other_user, as_user, as_other):
    private = factories.make_room(user, kind=Room.Kind.PRIVATE)
    public = factories.make_room(user)
    joined = as_other.post(f"/api/rooms/{public.pk}/join/")
    assert joined.status_code == 200 and joined.json()["membership"]["role"] == "member"
    assert as_other.post(f"/api/rooms/{public.pk}/leave/").status_code == 204
    assert not Membership.objects.get(room=public, user=other_user).is_active
    assert as_other.post(f"/api/rooms/{private.pk}/join/").status_code == 404
    refused = as_other.post(f"/api/rooms/{public.pk}/invite/", {"user": user.pk}, format="json")
    assert refused.status_code == 403
    invited = as_user.post(
        f"/api/rooms/{private.pk}/invite/", {"user": other_user.pk}, format="json"
    )
    assert invited.status_code == 200 and invited.json()["user"]["id"] == other_user.pk
    assert as_other.get(f"/api/rooms/{private.pk}/").status_code == 200


def test_members_list_and_moderation_actions(room, user, other_user, as_user, as_other):
    as_other.post(f"/api/rooms/{room.pk}/join/")
    members = as_user.get(f"/api/rooms/{room.pk}/members/").json()
    assert [(m["user"]["username"], m["role"]) for m in members["results"]] == [
        (user.username, "owner"),
        (other_user.username, "member"),
    ]
    base = f"/api/rooms/{room.pk}/members/{other_user.pk}"
    until = (timezone.now() + timedelta(hours=1)).isoformat()
    muted = as_user.post(f"{base}/mute/", {"until": until, "reason": "calm"}, format="json")
    assert muted.status_code == 200 and muted.json()["muted_until"] is not None
    send = as_other.post(f"/api/rooms/{room.pk}/messages/", {"body": "hey"}, format="json")
    assert send.status_code == 403 and "muted" in send.json()["detail"]
    assert (
        as_user.post(f"{base}/mute/", {"until": None}, format="json").json()["muted_until"] is None
    )
    role = as_user.post(f"{base}/role/", {"role": "moderator"}, format="json")
    assert role.json()["role"] == "moderator"
    assert as_user.post(f"{base}/role/", {"role": "admin"}, format="json").status_code == 400
    assert as_user.post(f"{base}/role/", {"role": "member"}, format="json").status_code == 200
    assert as_user.post(f"{base}/kick/", {"reason": "out"}, format="json").status_code == 204
    as_other.post(f"/api/rooms/{room.pk}/join/")
    banned = as_user.post(f"{base}/ban/", {"reason": "spam"}, format="json")
    assert banned.status_code == 200 and banned.json()["banned"] is True
    assert banned.json()["ban_reason"] == "spam" and banned.json()["is_active"] is False
    rejoin = as_other.post(f"/api/rooms/{room.pk}/join/")
    assert rejoin.status_code == 403 and rejoin.json()["code"] == "forbidden"
    bans = as_user.get(f"/api/rooms/{room.pk}/members/?banned=true").json()["results"]
    assert [b["user"]["id"] for b in bans] == [other_user.pk]
    assert as_user.post(f"{base}/unban/", {}, format="json").status_code == 200
    assert as_other.post(f"/api/rooms/{room.pk}/join/").status_code == 200


def test_a_member_cannot_moderate(room, user, other_user, as_other):
    as_other.post(f"/api/rooms/{room.pk}/join/")
    third = factories.make_user()
    services.room_join(room=room, user=third)
    seq = Room.objects.get(pk=room.pk).last_seq
    for action, body in [
        ("ban", {"reason": "x"}),
        ("kick", {}),
        ("role", {"role": "moderator"}),
        ("mute", {"until": (timezone.now() + timedelta(hours=1)).isoformat()}),
    ]:
        response = as_other.post(
            f"/api/rooms/{room.pk}/members/{third.pk}/{action}/", body, format="json"
        )
        assert response.status_code == 403, action
        assert response.json()["code"] == "forbidden"
    assert as_other.get(f"/api/rooms/{room.pk}/members/?banned=1").status_code == 403
    assert Room.objects.get(pk=room.pk).last_seq == seq


@pytest.mark.parametrize("body", [{"until": "tomorrow"}, {"until": "2020-01-01T00:00:00Z"}, {}])
def test_bad_mute_input_is_a_400(room, other_user, as_user, body):
    services.room_join(room=room, user=other_user)
    response = as_user.post(
        f"/api/rooms/{room.pk}/members/{other_user.pk}/mute/", body, format="json"
    )
    assert response.status_code == 400 and response.json()["code"] == "invalid"
    assert Membership.objects.get(room=room, user=other_user).muted_until is None


def test_events_since_returns_stored_envelopes_oldest_first_and_pages(room, user, as_user):
    for i in range(4):
        factories.send(room, user, f"m{i}")
    stored = [e.envelope for e in Event.objects.in_room(room).sequenced().order_by("seq")]
    page = as_user.get(f"/api/rooms/{room.pk}/events/?since=1&limit=3").json()
    assert page["results"] == stored[1:4]
    assert page["last_seq"] == stored[-1]["seq"]
    rest = as_user.get(page["next"]).json()
    assert rest["results"] == stored[4:] and rest["next"] is None
    assert (
        as_user.get(f"/api/rooms/{room.pk}/events/?since={stored[-1]['seq']}").json()["results"]
        == []
    )


def test_event_log_leaves_out_receipts(room, user, other_user, as_other):
    services.room_join(room=room, user=other_user)
    factories.send(room, user)
    seq = Room.objects.get(pk=room.pk).last_seq
    services.mark_read(room=room, user=other_user, seq=seq)
    types = [e["type"] for e in as_other.get(f"/api/rooms/{room.pk}/events/").json()["results"]]
    assert "receipt.updated" not in types and types[-1] == "message.created"


def test_token_authentication_works_on_the_api(room, user):
    client = factories.api_client(user, token=True)
    assert client.get(f"/api/rooms/{room.pk}/").status_code == 200
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    assert client.get(f"/api/rooms/{room.pk}/").status_code == 401


def test_browsable_api_renders_html_pages(room, user):
    from django.test import Client

    client = Client()
    client.force_login(user)
    for url in (
        "/api/rooms/",
        f"/api/rooms/{room.pk}/",
        f"/api/rooms/{room.pk}/messages/",
        f"/api/rooms/{room.pk}/events/",
        f"/api/rooms/{room.pk}/members/",
        "/api/me/",
    ):
        page = client.get(url, HTTP_ACCEPT="text/html")
        assert page.status_code == 200, url
        assert page["Content-Type"].startswith("text/html") and b"<form" in page.content, url


def test_site_moderator_moderates_a_private_room_they_are_not_in(user, other_user):
    room = factories.make_room(user, kind=Room.Kind.PRIVATE, members=[other_user])
    mid = factories.send(room, other_user, "against the rules").envelope["data"]["id"]
    client = factories.api_client(factories.make_moderator())
    assert client.get(f"/api/rooms/{room.pk}/messages/").status_code == 200
    deleted = client.delete(f"/api/messages/{mid}/?reason=rules")
    assert deleted.status_code == 200 and deleted.json()["data"]["by_moderator"] is True
    banned = client.post(
        f"/api/rooms/{room.pk}/members/{other_user.pk}/ban/",
        {"reason": "rules", "until": None},
        format="json",
    )
    assert banned.status_code == 200 and banned.json()["banned"] is True
    assert factories.api_client(other_user).get(f"/api/rooms/{room.pk}/").status_code == 404
