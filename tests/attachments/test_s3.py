"""The S3 storage path (django-storages, boto3) against a local S3-compatible server: moto's
server mode, started on a spare port by the fixture. Presigned URLs are handed out only
after the authorization check; redaction deletes the objects."""

from __future__ import annotations

import boto3
import pytest
import requests
from django.test import override_settings

from apps.attachments.models import Upload
from apps.messaging import services as messaging
from apps.messaging.models import Message
from apps.rooms.models import Room
from tests import factories
from tests.attachments.conftest import png, post_upload
from tests.support.services import free_port

pytestmark = pytest.mark.django_db
BUCKET = "chat-uploads-test"
KEYS = {"access_key": "testing-key", "secret_key": "testing-secret"}


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=KEYS["access_key"],
        aws_secret_access_key=KEYS["secret_key"],
    )
    client.create_bucket(Bucket=BUCKET)
    yield endpoint, client
    server.stop()


@pytest.fixture
def s3(s3_endpoint, settings):
    endpoint, client = s3_endpoint
    storages = dict(settings.STORAGES)
    storages["uploads"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": BUCKET,
            "endpoint_url": endpoint,
            "region_name": "us-east-1",
            "default_acl": None,
            "querystring_auth": True,
            "file_overwrite": False,
            "addressing_style": "path",
            **KEYS,
        },
    }
    with override_settings(STORAGES=storages):
        yield client


def keys(client) -> set[str]:
    return {o["Key"] for o in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])}


def test_uploads_go_to_the_bucket_and_readers_get_a_presigned_url_after_the_check(
    s3, user, other_user, django_capture_on_commit_callbacks
):
    outsider = factories.make_user()
    room = factories.make_room(user, kind=Room.Kind.PRIVATE, members=[other_user])
    author = factories.api_client(user)
    data = png(40, 30)
    image = post_upload(author, data, name="s3.png").json()
    notes = post_upload(author, b"plain notes", name="notes.txt").json()
    upload = Upload.objects.get(pk=image["id"])
    assert upload.file in keys(s3)
    assert image["content_type"] == "image/png" and image["width"] == 40

    event = factories.send(room, user, "to the bucket", attachments=[image["id"], notes["id"]])

    reader = factories.api_client(other_user)
    response = reader.get(f"/api/uploads/{image['id']}/file/")
    assert response.status_code == 302
    presigned = response["Location"]
    assert presigned.startswith(s3_base(s3)) and "Signature" in presigned
    fetched = requests.get(presigned, timeout=10)
    assert fetched.status_code == 200
    assert fetched.content == data
    assert fetched.headers["Content-Type"] == "image/png"
    assert fetched.headers["Content-Disposition"].startswith("inline")
    text = requests.get(reader.get(f"/api/uploads/{notes['id']}/file/")["Location"], timeout=10)
    assert text.headers["Content-Disposition"] == 'attachment; filename="notes.txt"'
    assert text.content == b"plain notes"
    # The object itself is private: without the signature the server refuses it.
    bare = requests.get(presigned.split("?")[0], timeout=10)
    assert bare.status_code == 403

    stranger = factories.api_client(outsider).get(f"/api/uploads/{image['id']}/file/")
    assert stranger.status_code == 404 and "Location" not in stranger

    message = Message.objects.get(pk=event.envelope["data"]["id"])
    with django_capture_on_commit_callbacks(execute=True):
        messaging.message_delete(message=message, actor=user)
    assert keys(s3) == set()
    assert reader.get(f"/api/uploads/{image['id']}/file/").status_code == 404


def s3_base(client) -> str:
    return client.meta.endpoint_url + "/" + BUCKET + "/"


def test_a_disguised_file_never_reaches_the_bucket(s3, user):
    exe = b"MZ\x90\x00" + b"\x00" * 100
    response = post_upload(factories.api_client(user), exe, name="photo.png")
    assert response.status_code == 415
    assert keys(s3) == set()
