"""The moderators' admin, driven through the Django test client as a moderator."""

import asyncio
import html
import json
import re

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import Group, Permission
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import close_old_connections
from django.test import Client

from apps.attachments import services as attachments
from apps.attachments import thumbnails
from apps.core.errors import ServiceError
from apps.events.models import Event
from apps.messaging import services as messaging
from apps.messaging.models import Message
from apps.rooms import services as rooms
from apps.rooms.models import Membership, ModerationAction, Room
from tests import factories
from tests.attachments.conftest import body_of, png

MEMBERSHIPS = "/admin/rooms/membership/"
MESSAGES = "/admin/messaging/message/"
ROOMS = "/admin/rooms/room/"


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def act(client, url, action, objects, **form):
    data = {"action": action, ACTION_CHECKBOX_NAME: [o.pk for o in objects], **form}
    return client.post(url, data)


def apply(client, url, action, objects, **form):
    """Choose the action, then submit its reason form."""
    first = act(client, url, action, objects)
    assert first.status_code == 200 and b'name="apply"' in first.content
    done = act(client, url, action, objects, apply="1", **form)
    assert done.status_code == 302, done.content[:2000]
    return done


@pytest.fixture
def moderator(db):
    return factories.make_moderator(username="mod")


@pytest.fixture
def member(room, other_user):
    rooms.room_join(room=room, user=other_user)
    return Membership.objects.get(room=room, user=other_user)


def test_moderators_group_is_staff_only_with_just_moderation_permissions(db):
    group = Group.objects.get(name="Moderators")
    perms = {f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.all()}
    assert "rooms.moderate_room" in perms
    assert not any(p.split(".")[1].startswith(("add_", "change_", "delete_")) for p in perms)
    moderator = factories.make_moderator()
    assert moderator.is_staff and not moderator.is_superuser


@pytest.mark.django_db
@pytest.mark.parametrize("url", [ROOMS, MEMBERSHIPS, MESSAGES, "/admin/rooms/moderationaction/"])
def test_moderator_sees_the_moderation_pages(moderator, room, url):
    page = logged_in(moderator).get(url)
    assert page.status_code == 200
    if url == MEMBERSHIPS:
        assert b'value="ban"' in page.content and b'value="delete_selected"' not in page.content


@pytest.mark.django_db
def test_ban_with_a_reason_and_duration_goes_through_the_service(moderator, room, member):
    apply(logged_in(moderator), MEMBERSHIPS, "ban", [member], reason="spam links", duration="86400")
    member.refresh_from_db()
    assert member.is_banned() and not member.is_active and member.banned_until is not None
    assert member.ban_reason == "spam links"
    event = Event.objects.in_room(room).sequenced().order_by("-seq").first()
    assert event.type == "member.banned" and event.envelope["actor"]["username"] == "mod"
    audit = ModerationAction.objects.get(action="ban")
    assert (audit.actor, audit.target_user, audit.reason) == (moderator, member.user, "spam links")
    with pytest.raises(ServiceError):
        rooms.room_join(room=room, user=member.user)


@pytest.mark.django_db
def test_blank_reason_gets_a_default_naming_the_moderator(moderator, member):
    apply(logged_in(moderator), MEMBERSHIPS, "kick", [member], reason="")
    member.refresh_from_db()
    assert not member.is_active
    assert ModerationAction.objects.get(action="kick").reason == "Kick by mod in the admin"


@pytest.mark.django_db
def test_mute_unmute_roles_and_unban(moderator, room, member):
    client = logged_in(moderator)
    apply(client, MEMBERSHIPS, "mute", [member], reason="cool down", duration="600")
    member.refresh_from_db()
    assert member.is_muted()
    assert act(client, MEMBERSHIPS, "unmute", [member]).status_code == 302
    member.refresh_from_db()
    assert not member.is_muted()
    act(client, MEMBERSHIPS, "make_moderator", [member])
    member.refresh_from_db()
    assert member.role == "moderator"
    act(client, MEMBERSHIPS, "make_member", [member])
    apply(client, MEMBERSHIPS, "ban", [member], reason="", duration="")
    apply(client, MEMBERSHIPS, "unban", [member], reason="appeal accepted")
    member.refresh_from_db()
    assert member.role == "member" and not member.is_banned()
    unbanned = Event.objects.in_room(room).sequenced().order_by("-seq").first()
    assert unbanned.type == "member.unbanned"
    assert unbanned.envelope["data"]["reason"] == "appeal accepted"
    assert ModerationAction.objects.get(action="unban").reason == "appeal accepted"
    assert list(
        ModerationAction.objects.order_by("created_at").values_list("action", flat=True)
    ) == ["mute", "unmute", "role", "role", "ban", "unban"]


@pytest.mark.django_db
def test_refusals_from_the_service_are_reported_and_change_nothing(moderator, room, user):
    owner = Membership.objects.get(room=room, user=user)
    rooms.room_archive(room=room, actor=user)
    seq = Room.objects.get(pk=room.pk).last_seq
    response = logged_in(moderator).post(
        MEMBERSHIPS, {"action": "kick", ACTION_CHECKBOX_NAME: [owner.pk], "apply": "1"}, follow=True
    )
    assert b"refused" in response.content and b"archived" in response.content
    assert Room.objects.get(pk=room.pk).last_seq == seq


@pytest.mark.django_db
def test_message_search_filter_and_delete_action(moderator, room, user, other_user, member):
    keep = factories.send(room, user, "a friendly note")
    rude = factories.send(room, other_user, "something rude here")
    client = logged_in(moderator)
    found = client.get(MESSAGES, {"q": "rude"})
    assert b"something rude here" in found.content and b"a friendly note" not in found.content
    by_author = client.get(MESSAGES, {"author__id__exact": other_user.pk})
    assert (
        b"something rude here" in by_author.content and b"a friendly note" not in by_author.content
    )
    assert b"a friendly note" in client.get(MESSAGES, {"room__id__exact": room.pk}).content
    message = Message.objects.get(pk=rude.envelope["data"]["id"])
    apply(client, MESSAGES, "delete_messages", [message], reason="insults")
    message.refresh_from_db()
    assert message.is_deleted and message.deleted_by == moderator
    deleted = Event.objects.in_room(room).sequenced().order_by("-seq").first()
    assert deleted.envelope["data"] == {"id": message.pk, "by_moderator": True, "reason": "insults"}
    assert ModerationAction.objects.get(action="delete_message").reason == "insults"
    assert not Message.objects.get(pk=keep.envelope["data"]["id"]).is_deleted


def inline_cells(page: bytes, field: str) -> list[str]:
    """The cells of one column of the attachments inline, in row order."""
    group = page.decode().split('id="attachments-group"', 1)[1].split("</fieldset>", 1)[0]
    return re.findall(rf'<td class="field-{field}">\s*<p>(.*?)</p>', group, re.S)


def attribute(cell: str, tag: str, name: str) -> str:
    return html.unescape(re.search(rf'<{tag}\b[^>]*\b{name}="([^"]*)"', cell).group(1))


@pytest.mark.django_db
def test_a_messages_page_shows_its_files_which_open_for_the_moderator(moderator, user):
    # A private room the moderator is not in: site moderators read every room.
    room = factories.make_room(user, kind=Room.Kind.PRIVATE)
    image = png(640, 480)
    photo = attachments.upload_create(
        owner=user, uploaded_file=SimpleUploadedFile("sunset.png", image, "image/png")
    )
    thumbnails.make(photo.pk)  # what the worker does after the upload's commit
    notes = attachments.upload_create(
        owner=user, uploaded_file=SimpleUploadedFile("notes <b>.txt", b"the agenda\n", "text/plain")
    )
    sent = factories.send(room, user, "two files", attachments=[str(photo.pk), str(notes.pk)])
    url = f"{MESSAGES}{sent.envelope['data']['id']}/change/"
    client = logged_in(moderator)

    page = client.get(url)

    assert page.status_code == 200
    assert [html.unescape(c) for c in inline_cells(page.content, "name")] == [
        "sunset.png",
        "notes _b_.txt",  # the sanitized name, escaped: no markup of the uploader's reaches it
    ]
    assert inline_cells(page.content, "content_type") == ["image/png", "text/plain"]
    sizes = inline_cells(page.content, "file_size")
    assert f"({len(image)} bytes)" in sizes[0] and sizes[1].endswith("(11 bytes)")
    assert inline_cells(page.content, "dimensions") == ["640 × 480", "–"]
    links = [attribute(c, "a", "href") for c in inline_cells(page.content, "open_link")]
    assert links == [f"/api/uploads/{photo.pk}/file/", f"/api/uploads/{notes.pk}/file/"]
    preview, none = inline_cells(page.content, "preview")
    assert none == "–"
    thumbnail = attribute(preview, "img", "src")
    assert thumbnail == f"/api/uploads/{photo.pk}/thumbnail/"
    assert (attribute(preview, "img", "width"), attribute(preview, "img", "height")) == (
        "160",
        "120",
    )
    assert b'name="attachments-0-name"' not in page.content  # read-only: no form fields

    # The links work with the admin session, and open the files themselves.
    assert body_of(client.get(links[0])) == image
    assert body_of(client.get(links[1])) == b"the agenda\n"
    opened = client.get(thumbnail)
    assert opened.status_code == 200 and opened["Content-Type"] == "image/jpeg"
    # Staff outside Moderators see neither the page nor the files.
    staff = logged_in(factories.make_user(is_staff=True))
    assert staff.get(url).status_code == 403
    assert staff.get(links[1]).status_code == 404


@pytest.mark.django_db
def test_a_deleted_messages_page_lists_no_files(moderator, room, user):
    notes = attachments.upload_create(
        owner=user, uploaded_file=SimpleUploadedFile("notes.txt", b"the agenda\n", "text/plain")
    )
    sent = factories.send(room, user, "a file", attachments=[str(notes.pk)])
    message = Message.objects.get(pk=sent.envelope["data"]["id"])
    page = logged_in(moderator).get(f"{MESSAGES}{message.pk}/change/")
    assert inline_cells(page.content, "name") == ["notes.txt"]
    messaging.message_delete(message=message, actor=user)
    page = logged_in(moderator).get(f"{MESSAGES}{message.pk}/change/")
    assert page.status_code == 200 and inline_cells(page.content, "name") == []
    assert b"notes.txt" not in page.content


@pytest.mark.django_db
def test_archive_room_action(moderator, room):
    apply(logged_in(moderator), ROOMS, "archive_rooms", [room], reason="dead room")
    room.refresh_from_db()
    assert room.is_archived
    assert ModerationAction.objects.get(action="archive").reason == "dead room"


@pytest.mark.django_db
def test_staff_who_are_not_moderators_are_refused(room, user, member):
    staff = factories.make_user(is_staff=True)
    assert logged_in(staff).get(MEMBERSHIPS).status_code == 403
    # Even with read access (and owning the room), staff outside the group have no actions.
    staff.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_membership", "view_message", "view_room"])
    )
    rooms.room_invite(room=room, actor=user, user=staff)
    rooms.member_set_role(room=room, actor=user, user=staff, role="moderator")
    client = logged_in(staff)
    page = client.get(MEMBERSHIPS)
    assert page.status_code == 200 and b'value="ban"' not in page.content
    seq = Room.objects.get(pk=room.pk).last_seq
    for action in ("ban", "kick", "mute"):
        act(client, MEMBERSHIPS, action, [member], apply="1", reason="x", duration="600")
    message = Message.objects.get(pk=factories.send(room, user).envelope["data"]["id"])
    act(client, MESSAGES, "delete_messages", [message], apply="1", reason="x")
    member.refresh_from_db()
    message.refresh_from_db()
    assert member.is_active and not member.is_banned() and not member.is_muted()
    assert not message.is_deleted
    assert Room.objects.get(pk=room.pk).last_seq == seq + 1  # only the test's own send
    assert not ModerationAction.objects.exclude(action="role").exists()


@pytest.mark.django_db
def test_admin_pages_are_read_only(moderator, room, member):
    client = logged_in(moderator)
    assert client.get(f"{MEMBERSHIPS}add/").status_code == 403
    client.post(f"{MEMBERSHIPS}{member.pk}/change/", {"role": "owner", "is_active": "on"})
    member.refresh_from_db()
    assert member.role == "member"
    assert client.post(f"{ROOMS}{room.pk}/delete/", {"post": "yes"}).status_code == 403
    assert Room.objects.filter(pk=room.pk).exists()


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_a_message_deleted_in_the_admin_disappears_live_from_clients():
    owner = factories.make_user()
    room = factories.make_room(owner)
    message = Message.objects.get(pk=factories.send(room, owner, "bad").envelope["data"]["id"])
    moderator = factories.make_moderator()
    layer = get_channel_layer()

    def delete_in_admin():
        try:
            apply(logged_in(moderator), MESSAGES, "delete_messages", [message], reason="")
        finally:
            close_old_connections()

    async def listen():
        channel = await layer.new_channel()
        await layer.group_add(f"room.{room.pk}", channel)
        try:
            await asyncio.get_running_loop().run_in_executor(None, delete_in_admin)
            return await asyncio.wait_for(layer.receive(channel), timeout=10)
        finally:
            await layer.group_discard(f"room.{room.pk}", channel)

    received = json.loads(async_to_sync(listen)()["text"])
    assert received["type"] == "message.deleted"
    assert received["data"] == {
        "id": message.pk,
        "by_moderator": True,
        "reason": f"Delete by {moderator.username} in the admin",
    }
