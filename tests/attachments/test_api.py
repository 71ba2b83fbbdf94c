"""POST /api/uploads/, sending attachments, and who may download them (PROTOCOL §8)."""

from __future__ import annotations

import time
import uuid

import jsonschema
import pytest
from django.test import override_settings
from django.utils import timezone

from apps.attachments.models import Upload
from apps.events.schemas import SCHEMAS
from apps.messaging import services as messaging
from apps.messaging.models import Message
from apps.messaging.services import SendRequest
from apps.rooms.models import Room
from tests import factories
from tests.attachments.conftest import body_of, jpeg, png, post_upload, stored

pytestmark = pytest.mark.django_db

UPLOAD_FIELDS = {"id", "name", "size", "content_type", "url", "thumbnail_url", "width", "height"}


def validate(envelope):
    jsonschema.Draft202012Validator(
        SCHEMAS[envelope["type"]], format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).validate(envelope)


# --- Uploading -----------------------------------------------------------------------------------


def test_an_image_upload_answers_201_with_its_sniffed_type_and_size_and_is_stored(client, user):
    data = png(64, 48)
    response = post_upload(client, data, name="holiday.png", content_type="application/x-lie")

    assert response.status_code == 201
    body = response.json()
    assert set(body) == UPLOAD_FIELDS
    assert body["name"] == "holiday.png"
    assert body["size"] == len(data)
    assert body["content_type"] == "image/png"  # from the bytes, not the client's header
    assert (body["width"], body["height"]) == (64, 48)
    assert body["thumbnail_url"] is None  # made by a worker later
    assert body["url"].startswith(f"/api/uploads/{body['id']}/file/?sig=")
    upload = Upload.objects.get(pk=body["id"])
    assert upload.owner_id == user.pk and upload.message_id is None
    assert stored(upload.file)
    # Not under a publicly served path: the storage key is random and the file lives outside
    # static files.
    assert body["id"].replace("-", "") in upload.file and "holiday" not in upload.file


def test_a_text_file_is_text_plain_without_dimensions(uploaded):
    body = uploaded(b"just some notes\n", name="notes.txt", content_type="text/plain")
    assert body["content_type"] == "text/plain"
    assert body["width"] is None and body["height"] is None


def test_an_executable_named_png_is_refused_415_invalid(client):
    exe = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff" + b"\x00" * 200
    response = post_upload(client, exe, name="cute-cat.png", content_type="image/png")

    assert response.status_code == 415
    assert response.json()["code"] == "invalid"
    assert "application/x-msdownload" in response.json()["detail"]
    assert not Upload.objects.exists()


def test_a_file_with_png_magic_that_does_not_decode_is_refused(client):
    fake = b"\x89PNG\r\n\x1a\n" + b"not really a png" * 20
    response = post_upload(client, fake, name="x.png")
    assert response.status_code == 415
    assert response.json()["code"] == "invalid"
    assert not Upload.objects.exists()


def test_html_and_svg_are_refused_whatever_their_name(client):
    for data, name in [
        (b"<html><script>alert(1)</script></html>", "notes.txt"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "logo.svg"),
    ]:
        response = post_upload(client, data, name=name, content_type="text/plain")
        assert response.status_code == 415, name
        assert response.json()["code"] == "invalid"


@override_settings(UPLOAD_MAX_BYTES=1000)
def test_a_file_over_the_limit_is_413_too_large(client):
    response = post_upload(client, b"a" * 1001, name="big.txt", content_type="text/plain")
    assert response.status_code == 413
    assert response.json()["code"] == "too_large"
    assert "1000 bytes" in response.json()["detail"]
    assert not Upload.objects.exists()
    assert post_upload(client, b"a" * 1000, name="ok.txt").status_code == 201


@override_settings(UPLOAD_MAX_BYTES=1000)
def test_a_body_far_over_the_limit_is_refused_from_its_content_length(client):
    response = post_upload(client, b"a" * 200_000, name="huge.txt")
    assert response.status_code == 413
    assert response.json()["code"] == "too_large"


@override_settings(UPLOAD_ALLOWED_TYPES=["image/png"])
def test_the_allowed_types_are_a_setting(client):
    assert post_upload(client, png(), name="a.png").status_code == 201
    refused = post_upload(client, b"plain text", name="a.txt", content_type="text/plain")
    assert refused.status_code == 415


def test_names_are_sanitized(uploaded):
    body = uploaded(b"hello", name="../../etc/\u202etxt.exe", content_type="text/plain")
    assert body["name"] == "txt.exe"


def test_missing_or_empty_file_is_invalid(client):
    assert client.post("/api/uploads/", {}, format="multipart").json()["code"] == "invalid"
    empty = post_upload(client, b"", name="empty.txt")
    assert empty.status_code == 400 and empty.json()["code"] == "invalid"


def test_anonymous_upload_is_401():
    response = post_upload(factories.api_client(), png())
    assert response.status_code == 401


@override_settings(RATE_LIMIT_UPLOAD=2, RATE_LIMIT_UPLOAD_PER_SECOND=0.001)
def test_uploads_take_from_their_own_bucket_in_the_one_limiter(client):
    assert post_upload(client, png()).status_code == 201
    assert post_upload(client, png()).status_code == 201
    refused = post_upload(client, png())
    assert refused.status_code == 429
    assert refused.json()["code"] == "rate_limited"
    assert int(refused["Retry-After"]) >= 1


# --- Sending -------------------------------------------------------------------------------------


def test_rest_send_links_the_uploads_and_message_created_carries_them(client, user, room, uploaded):
    image = uploaded(png(30, 20), name="a.png")
    notes = uploaded(b"notes", name="b.txt", content_type="text/plain")

    response = client.post(
        f"/api/rooms/{room.pk}/messages/",
        {
            "body": "look",
            "client_id": str(uuid.uuid4()),
            "attachments": [image["id"], notes["id"]],
        },
        format="json",
    )

    assert response.status_code == 201, response.content
    envelope = response.json()
    validate(envelope)
    files = envelope["data"]["attachments"]
    assert [f["id"] for f in files] == [image["id"], notes["id"]]
    assert files[0] == {
        "id": image["id"],
        "name": "a.png",
        "size": image["size"],
        "content_type": "image/png",
        "width": 30,
        "height": 20,
        "url": f"/api/uploads/{image['id']}/file/",
        "thumbnail_url": None,
    }
    message = Message.objects.get(pk=envelope["data"]["id"])
    assert sorted(str(u.pk) for u in message.attachments.all()) == sorted(
        [image["id"], notes["id"]]
    )
    # The message objects carry them with signed links for the reader.
    listed = client.get(f"/api/rooms/{room.pk}/messages/").json()["results"][0]
    assert [a["id"] for a in listed["attachments"]] == [image["id"], notes["id"]]
    assert listed["attachments"][0]["url"].startswith(f"/api/uploads/{image['id']}/file/?sig=")
    # And the log (replays, the events page) keeps them.
    logged = client.get(f"/api/rooms/{room.pk}/events/?since=0").json()["results"]
    assert logged[-1]["data"]["attachments"] == files


def test_a_message_may_be_files_alone(client, room, uploaded):
    image = uploaded()
    response = client.post(
        f"/api/rooms/{room.pk}/messages/", {"body": "", "attachments": [image["id"]]}, format="json"
    )
    assert response.status_code == 201
    validate(response.json())
    assert response.json()["data"]["body"] == ""
    assert (
        client.post(f"/api/rooms/{room.pk}/messages/", {"body": ""}, format="json").status_code
        == 400
    )


def test_sending_someone_elses_or_a_used_or_an_unknown_upload_is_invalid_and_sends_nothing(
    user, other_user, room, uploaded
):
    factories.make_room(other_user)
    room.memberships.create(user=other_user, role="member")
    theirs = factories.api_client(other_user)
    their_upload = post_upload(theirs, png()).json()
    mine = uploaded()
    factories.send(room, user, "first", attachments=[mine["id"]])
    before = Message.objects.count()

    client = factories.api_client(user)
    for ids in (
        [their_upload["id"]],
        [mine["id"]],
        [str(uuid.uuid4())],
        ["not-a-uuid"],
        [mine["id"], mine["id"]],
        "not a list",
    ):
        response = client.post(
            f"/api/rooms/{room.pk}/messages/", {"body": "again", "attachments": ids}, format="json"
        )
        assert response.status_code == 400, ids
        assert response.json()["code"] == "invalid"
    assert Message.objects.count() == before
    assert Upload.objects.get(pk=their_upload["id"]).message_id is None


def test_two_sends_of_one_batch_cannot_take_the_same_upload(user, room, uploaded):
    upload = uploaded()
    results = messaging.message_send_many(
        [
            SendRequest(room, user, "one", uuid.uuid4(), None, [upload["id"]]),
            SendRequest(room, user, "two", uuid.uuid4(), None, [upload["id"]]),
            SendRequest(room, user, "three", uuid.uuid4()),
        ]
    )
    assert results[0].envelope["data"]["attachments"][0]["id"] == upload["id"]
    assert getattr(results[1], "code", None) == "invalid"
    assert results[2].envelope["data"]["attachments"] == []
    assert Upload.objects.get(pk=upload["id"]).message_id == results[0].envelope["data"]["id"]


def test_a_refused_send_leaves_the_upload_unused(user, room, uploaded):
    upload = uploaded()
    Room.objects.filter(pk=room.pk).update(archived_at=timezone.now())
    result = messaging.message_send_many(
        [SendRequest(room, user, "x", uuid.uuid4(), None, [upload["id"]])]
    )[0]
    assert getattr(result, "code", None) == "forbidden"
    assert Upload.objects.get(pk=upload["id"]).message_id is None


def test_a_resend_answers_the_original_and_takes_nothing_more(user, room, uploaded):
    first, second = uploaded(), uploaded()
    client_id = uuid.uuid4()
    original = factories.send(room, user, "once", client_id=client_id, attachments=[first["id"]])
    again = factories.send(room, user, "once", client_id=client_id, attachments=[second["id"]])
    assert again.envelope == original.envelope
    assert Upload.objects.get(pk=second["id"]).message_id is None


# --- Downloading ---------------------------------------------------------------------------------


def _private_room_with(user, other):
    room = factories.make_room(user, kind=Room.Kind.PRIVATE, members=[other])
    return room


def test_room_readers_download_outsiders_get_404(user, other_user, uploaded):
    outsider = factories.make_user()
    room = _private_room_with(user, other_user)
    data = png(10, 10)
    image = uploaded(data)
    notes = uploaded(b"secret notes", name="notes.txt", content_type="text/plain")
    factories.send(room, user, "files", attachments=[image["id"], notes["id"]])
    stable = f"/api/uploads/{image['id']}/file/"

    reader = factories.api_client(other_user, token=True)
    response = reader.get(stable)
    assert response.status_code == 200
    assert body_of(response) == data
    assert response["Content-Type"] == "image/png"
    assert response["Content-Disposition"].startswith("inline")
    assert response["X-Content-Type-Options"] == "nosniff"
    text = reader.get(f"/api/uploads/{notes['id']}/file/")
    assert text["Content-Type"] == "text/plain"
    assert text["Content-Disposition"] == 'attachment; filename="notes.txt"'
    assert body_of(text) == b"secret notes"

    stranger = factories.api_client(outsider)
    assert stranger.get(stable).status_code == 404
    assert stranger.get(f"/api/uploads/{image['id']}/").status_code == 404
    assert factories.api_client().get(stable).status_code == 401
    assert factories.api_client().get(f"/api/uploads/{uuid.uuid4()}/file/").status_code == 401
    assert reader.get(f"/api/uploads/{uuid.uuid4()}/file/").status_code == 404


def test_a_signed_link_works_without_credentials_only_while_its_reader_may_read(
    user, other_user, uploaded
):
    room = _private_room_with(user, other_user)
    image = uploaded()
    factories.send(room, user, "pic", attachments=[image["id"]])
    link = factories.api_client(other_user).get(f"/api/uploads/{image['id']}/").json()["url"]
    anonymous = factories.api_client()

    assert anonymous.get(link).status_code == 200
    # A token tampered with, or one for another file, is refused.
    assert anonymous.get(link[:-3] + "xyz").status_code == 403
    other = uploaded()
    assert (
        anonymous.get(f"/api/uploads/{other['id']}/file/?" + link.split("?")[1]).status_code == 403
    )
    # Once the reader leaves the private room, their link stops working.
    room.memberships.filter(user=other_user).delete()
    assert anonymous.get(link).status_code == 404


def test_an_expired_link_is_refused(user, room, uploaded):
    image = uploaded()
    factories.send(room, user, "pic", attachments=[image["id"]])
    # Signatures stamp whole seconds: a 3 s link is good for at least 2 s, gone after 4.
    with override_settings(UPLOAD_URL_MAX_AGE=3):
        link = factories.api_client(user).get(f"/api/uploads/{image['id']}/").json()["url"]
        anonymous = factories.api_client()
        assert anonymous.get(link).status_code == 200
        time.sleep(4.1)
        response = anonymous.get(link)
    assert response.status_code == 403
    assert response.json()["code"] == "forbidden"
    assert "expired" in response.json()["detail"]


def test_an_unsent_upload_is_the_uploaders_alone(user, other_user, uploaded):
    image = uploaded()
    assert factories.api_client(user).get(f"/api/uploads/{image['id']}/file/").status_code == 200
    assert (
        factories.api_client(other_user).get(f"/api/uploads/{image['id']}/file/").status_code == 404
    )


def test_a_thumbnail_is_404_until_made(user, room, uploaded):
    image = uploaded(jpeg(), name="big.jpg")
    assert (
        factories.api_client(user).get(f"/api/uploads/{image['id']}/thumbnail/").status_code == 404
    )
