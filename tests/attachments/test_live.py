"""Against real processes: a daphne server (WebSocket send with attachments) and a Celery
worker (thumbnails: the message never waits for them)."""

from __future__ import annotations

import io
import time

import pytest
import requests
from PIL import Image

from apps.attachments.models import Upload
from apps.rooms.models import Room
from tests import factories
from tests.attachments.conftest import jpeg, png
from tests.support.wsclient import WS

pytestmark = pytest.mark.django_db(transaction=True)


def upload_over_http(server, user, data, name):
    response = requests.post(
        f"{server.http_url}/api/uploads/",
        headers={"Authorization": f"Token {factories.make_token(user)}"},
        files={"file": (name, data, "application/octet-stream")},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return response.json()


def poll_thumbnail(server, user, upload_id, timeout=45.0) -> dict:
    headers = {"Authorization": f"Token {factories.make_token(user)}"}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = requests.get(
            f"{server.http_url}/api/uploads/{upload_id}/", headers=headers, timeout=10
        ).json()
        if body["thumbnail_url"]:
            return body
        time.sleep(0.3)
    raise AssertionError(f"no thumbnail after {timeout}s: {body}")


def test_the_worker_makes_the_thumbnail_and_websocket_sends_carry_the_files(
    server, celery_worker, user, other_user
):
    room = factories.make_room(user, kind=Room.Kind.PRIVATE, members=[other_user])
    reader = WS(server.ws_url, token=factories.make_token(other_user))
    sender = WS(server.ws_url, token=factories.make_token(user))
    try:
        reader.hello()
        reader.subscribe(room.pk)
        sender.hello()
        photo = upload_over_http(server, user, jpeg(1200, 900), "photo.jpg")
        notes = upload_over_http(server, user, b"meeting notes\n", "notes.txt")
        assert photo["width"] == 1200 and photo["height"] == 900

        ack = sender.send_message(room.pk, body="", attachments=[photo["id"], notes["id"]])
        assert ack["type"] == "ack", ack
        files = ack["event"]["data"]["attachments"]
        assert [f["name"] for f in files] == ["photo.jpg", "notes.txt"]
        created = reader.until(lambda f: f.get("type") == "message.created")
        assert created["data"]["attachments"] == files

        # The thumbnail comes from the worker; clients learn it from the upload endpoint.
        body = poll_thumbnail(server, other_user, photo["id"])
        thumb = requests.get(server.http_url + body["thumbnail_url"], timeout=10)
        assert thumb.status_code == 200
        assert thumb.headers["Content-Type"] == "image/jpeg"
        image = Image.open(io.BytesIO(thumb.content))
        assert image.format == "JPEG" and max(image.size) == 320
        assert image.size == (320, 240)
        full = requests.get(server.http_url + body["url"], timeout=10)
        assert full.headers["Content-Type"] == "image/jpeg"
        assert len(full.content) == photo["size"]
        upload = Upload.objects.get(pk=photo["id"])
        assert upload.thumbnail and (upload.width, upload.height) == (1200, 900)
        assert not Upload.objects.get(pk=notes["id"]).thumbnail  # not an image: none

        # A second send of a used upload is refused on the socket too, and nothing is sent.
        again = sender.send_message(room.pk, body="again", attachments=[photo["id"]])
        assert again["type"] == "error" and again["code"] == "invalid"
    finally:
        reader.close()
        sender.close()


def test_a_transparent_image_gets_a_png_thumbnail(server, celery_worker, user):
    body = upload_over_http(server, user, png(400, 100, (0, 0, 0, 0), mode="RGBA"), "a.png")
    body = poll_thumbnail(server, user, body["id"])
    thumb = requests.get(server.http_url + body["thumbnail_url"], timeout=10)
    assert thumb.headers["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(thumb.content)).size == (320, 80)
