"""The IDOR rule: a private room's data is a 404 to outsiders, identical to a missing room."""

import uuid

import pytest

from apps.events.models import Event
from apps.messaging.models import Message, Reaction
from apps.rooms import services
from apps.rooms.models import Membership, Room
from tests import factories

pytestmark = pytest.mark.django_db
MISSING = 10**9

# Every room-scoped endpoint: (method, path, body). {room}, {user} and {message} are filled in.
ROOM_ENDPOINTS = [
    ("get", "/api/rooms/{room}/", None),
    ("patch", "/api/rooms/{room}/", {"name": "pwned"}),
    ("delete", "/api/rooms/{room}/", None),
    ("post", "/api/rooms/{room}/join/", None),
    ("post", "/api/rooms/{room}/leave/", None),
    ("post", "/api/rooms/{room}/invite/", {"user": "{user}"}),
    ("post", "/api/rooms/{room}/read/", {"seq": 1}),
    ("get", "/api/rooms/{room}/events/?since=0", None),
    ("get", "/api/rooms/{room}/members/", None),
    ("get", "/api/rooms/{room}/members/?banned=1", None),
    ("post", "/api/rooms/{room}/members/{user}/ban/", {"reason": "x"}),
    ("post", "/api/rooms/{room}/members/{user}/unban/", {}),
    ("post", "/api/rooms/{room}/members/{user}/mute/", {"until": None}),
    ("post", "/api/rooms/{room}/members/{user}/kick/", {}),
    ("post", "/api/rooms/{room}/members/{user}/role/", {"role": "moderator"}),
    ("get", "/api/rooms/{room}/messages/", None),
    ("get", "/api/rooms/{room}/messages/?before=5&limit=2", None),
    ("post", "/api/rooms/{room}/messages/", {"body": "hi", "client_id": "{uuid}"}),
    # Invalid input must not reveal the room either: the room is resolved first.
    ("post", "/api/rooms/{room}/messages/", {"body": ""}),
    ("get", "/api/rooms/{room}/events/?since=nope", None),
]
MESSAGE_ENDPOINTS = [
    ("get", "/api/messages/{message}/", None),
    ("patch", "/api/messages/{message}/", {"body": "edited"}),
    ("delete", "/api/messages/{message}/", None),
    ("post", "/api/messages/{message}/reactions/", {"emoji": "👍"}),
    ("delete", "/api/messages/{message}/reactions/?emoji=👍", None),
    ("patch", "/api/messages/{message}/", {"body": ""}),
]


def fill(value, **ids):
    if isinstance(value, dict):
        return {k: fill(v, **ids) for k, v in value.items()}
    if isinstance(value, str):
        filled = value.format(uuid=uuid.uuid4(), **ids)
        return int(filled) if value == "{user}" else filled
    return value


def call(client, method, path, body, **ids):
    return getattr(client, method)(fill(path, **ids), fill(body, **ids), format="json")


def snapshot():
    return (
        Event.objects.count(),
        Message.objects.count(),
        Reaction.objects.count(),
        list(
            Membership.objects.order_by("pk").values_list(
                "is_active", "role", "banned_at", "muted_until", "last_read_seq"
            )
        ),
        list(Room.objects.order_by("pk").values_list("name", "archived_at", "last_seq")),
    )


@pytest.fixture
def hidden(user, other_user):
    """A private room with a member and a message (with a reaction), and a direct room."""
    private = factories.make_room(user, kind=Room.Kind.PRIVATE, members=[other_user])
    event = factories.send(private, user, "secret")
    message = Message.objects.get(pk=event.envelope["data"]["id"])
    from apps.messaging import services as messaging

    messaging.reaction_add(message=message, user=user, emoji="👍")
    direct = services.direct_room_open(user=user, other=other_user)
    dm = Message.objects.get(pk=factories.send(direct, user, "psst").envelope["data"]["id"])
    return {"private": (private, message), "direct": (direct, dm)}


def outsiders():
    """A plain user, staff without the Moderators group, and a user banned from the room."""
    return ["stranger", "staff", "banned"]


def make_outsider(kind, room, owner):
    if kind == "staff":
        return factories.make_user(is_staff=True)
    outsider = factories.make_user()
    if kind == "banned" and room.kind == Room.Kind.PRIVATE:
        services.room_invite(room=room, actor=owner, user=outsider)
        services.member_ban(room=room, actor=owner, user=outsider, reason="gone")
    return outsider


@pytest.mark.parametrize("which", ["private", "direct"])
@pytest.mark.parametrize(
    "method,path,body", ROOM_ENDPOINTS, ids=[f"{m} {p} {b}" for m, p, b in ROOM_ENDPOINTS]
)
def test_room_endpoint_is_404_to_outsiders_exactly_like_a_missing_room(
    hidden, user, other_user, which, method, path, body
):
    room, _ = hidden[which]
    for who in outsiders():
        client = factories.api_client(make_outsider(who, room, user))
        before = snapshot()
        seen = call(client, method, path, body, room=room.pk, user=other_user.pk)
        missing = call(client, method, path, body, room=MISSING, user=other_user.pk)
        assert seen.status_code == missing.status_code == 404, who
        assert seen.json() == missing.json() == {"code": "not_found", "detail": "room not found"}
        assert snapshot() == before


@pytest.mark.parametrize("which", ["private", "direct"])
@pytest.mark.parametrize(
    "method,path,body", MESSAGE_ENDPOINTS, ids=[f"{m} {p} {b}" for m, p, b in MESSAGE_ENDPOINTS]
)
def test_message_endpoint_is_404_to_outsiders_exactly_like_a_missing_message(
    hidden, user, which, method, path, body
):
    room, message = hidden[which]
    for who in outsiders():
        client = factories.api_client(make_outsider(who, room, user))
        before = snapshot()
        seen = call(client, method, path, body, message=message.pk)
        missing = call(client, method, path, body, message=MISSING)
        assert seen.status_code == missing.status_code == 404, who
        assert seen.json() == missing.json() == {"code": "not_found", "detail": "message not found"}
        assert snapshot() == before


@pytest.mark.parametrize(
    "method,path,body",
    ROOM_ENDPOINTS + MESSAGE_ENDPOINTS,
    ids=[f"{m} {p} {b}" for m, p, b in ROOM_ENDPOINTS + MESSAGE_ENDPOINTS],
)
def test_control_the_owner_is_not_told_404(hidden, user, other_user, method, path, body):
    """The same requests by the room's owner reach the room (so the 404s above mean something)."""
    room, message = hidden["private"]
    response = call(
        factories.api_client(user),
        method,
        path,
        body,
        room=room.pk,
        user=other_user.pk,
        message=message.pk,
    )
    assert response.status_code != 404 or response.json()["detail"] not in (
        "room not found",
        "message not found",
    )


# --- Banned, muted and blocked users (PROTOCOL §7: a ban holds everywhere) ----------------------

# What each may do on a room-scoped endpoint: the status answered (a 403 is `forbidden`).
# {message} is someone else's message, {own} the caller's own.
MEMBER_ENDPOINTS = (
    ROOM_ENDPOINTS
    + MESSAGE_ENDPOINTS
    + [
        ("patch", "/api/messages/{own}/", {"body": "edited"}),
        ("delete", "/api/messages/{own}/", None),
        ("get", "/api/messages/{own}/", None),
    ]
)
READS = {("get", p) for m, p, _ in MEMBER_ENDPOINTS if m == "get"}


def fill_all(value, **ids):
    if isinstance(value, str) and "{own}" in value:
        value = value.replace("{own}", str(ids["own"]))
    return fill(value, **ids)


def call_as(client, method, path, body, **ids):
    return getattr(client, method)(fill_all(path, **ids), fill(body, **ids), format="json")


def expected_for_muted(method, path, body):
    if body == {"body": ""} or "nope" in path:
        return {400}  # input is checked; writing would then be refused
    if "banned=1" in path:
        return {403}  # the ban list is for moderators
    if (method, path) in READS or path.endswith("/read/") or path.endswith("/leave/"):
        return {200, 204}
    if path == "/api/rooms/{room}/join/":
        return {200}  # already a member: nothing changes
    if path.startswith("/api/messages/{own}/") and method == "delete":
        return {200}  # one's own message can still be taken back
    if path.endswith("/reactions/?emoji=👍"):
        return {400}  # never reacted: the removal itself is allowed
    return {403}


@pytest.fixture
def public_room(user, other_user):
    room = factories.make_room(user, members=[other_user])
    message = Message.objects.get(pk=factories.send(room, user, "hello").envelope["data"]["id"])
    return room, message


def member_with_message(room, owner):
    person = factories.make_user()
    services.room_join(room=room, user=person)
    own = Message.objects.get(pk=factories.send(room, person, "mine").envelope["data"]["id"])
    return person, own


@pytest.mark.parametrize(
    "method,path,body", MEMBER_ENDPOINTS, ids=[f"{m} {p} {b}" for m, p, b in MEMBER_ENDPOINTS]
)
def test_a_user_banned_from_a_public_room_is_refused_everywhere_but_the_room_itself(
    public_room, user, other_user, method, path, body
):
    room, message = public_room
    banned, own = member_with_message(room, user)
    services.member_ban(room=room, actor=user, user=banned, reason="spam")
    before = snapshot()
    response = call_as(
        factories.api_client(banned),
        method,
        path,
        body,
        room=room.pk,
        user=other_user.pk,
        message=message.pk,
        own=own.pk,
    )
    if (method, path) == ("get", "/api/rooms/{room}/"):
        assert response.status_code == 200  # the room object (public rooms are listed)
    else:
        assert response.status_code == 403, response.json()
        assert response.json() == {"code": "forbidden", "detail": "you are banned from this room"}
    assert snapshot() == before


@pytest.mark.parametrize(
    "method,path,body", MEMBER_ENDPOINTS, ids=[f"{m} {p} {b}" for m, p, b in MEMBER_ENDPOINTS]
)
def test_a_muted_member_reads_but_writes_nothing(public_room, user, other_user, method, path, body):
    from datetime import timedelta

    from django.utils import timezone

    room, message = public_room
    muted, own = member_with_message(room, user)
    services.member_mute(
        room=room, actor=user, user=muted, until=timezone.now() + timedelta(hours=1)
    )
    before = Message.objects.count(), Reaction.objects.count()
    response = call_as(
        factories.api_client(muted),
        method,
        path,
        body,
        room=room.pk,
        user=other_user.pk,
        message=message.pk,
        own=own.pk,
    )
    assert response.status_code in expected_for_muted(method, path, body), response.content
    if response.status_code == 403:
        assert response.json()["code"] == "forbidden"
    if method != "delete":
        assert (Message.objects.count(), Reaction.objects.count()) == before


DIRECT_WRITES = [
    ("post", "/api/rooms/{room}/messages/", {"body": "hi", "client_id": "{uuid}"}),
    ("patch", "/api/messages/{own}/", {"body": "edited"}),
    ("post", "/api/messages/{message}/reactions/", {"emoji": "👍"}),
]


def expected_for_blocked(method, path, body):
    """As for a muted member, except that nobody leaves a direct room."""
    if path.endswith("/leave/"):
        return {403}
    return expected_for_muted(method, path, body)


@pytest.mark.parametrize(
    "method,path,body", MEMBER_ENDPOINTS, ids=[f"{m} {p} {b}" for m, p, b in MEMBER_ENDPOINTS]
)
def test_a_blocked_user_reads_the_direct_room_but_cannot_write_in_it(
    user, other_user, method, path, body
):
    direct = services.direct_room_open(user=user, other=other_user)
    theirs = Message.objects.get(pk=factories.send(direct, user, "a").envelope["data"]["id"])
    own = Message.objects.get(pk=factories.send(direct, other_user, "b").envelope["data"]["id"])
    from apps.users.services import block_create

    block_create(blocker=user, blocked=other_user)
    before = Message.objects.count(), Reaction.objects.count()
    response = call_as(
        factories.api_client(other_user),
        method,
        path,
        body,
        room=direct.pk,
        user=user.pk,
        message=theirs.pk,
        own=own.pk,
    )
    assert response.status_code in expected_for_blocked(method, path, body), response.content
    if (method, path, body) in DIRECT_WRITES:
        assert response.json() == {"code": "forbidden", "detail": "this person has blocked you"}
    if method != "delete":
        assert (Message.objects.count(), Reaction.objects.count()) == before
    # The blocker is not held back.
    blocker = factories.api_client(user)
    assert (
        blocker.post(
            f"/api/rooms/{direct.pk}/messages/", {"body": "still here"}, format="json"
        ).status_code
        == 201
    )
