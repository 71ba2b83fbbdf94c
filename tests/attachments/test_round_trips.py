"""Attachments cost the send and delete paths no round trip on PostgreSQL (libpq's trace,
tests/support/roundtrips.py): the uploads are read with the batch's reads, linked in its one
write statement, and deleted (returning their files) in the redaction's one statement."""

import uuid

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection

from apps.attachments import services as attachments
from apps.attachments.models import Upload
from apps.messaging import services as messaging
from apps.messaging.models import Message
from apps.messaging.services import SendRequest, message_send_many
from tests import factories
from tests.attachments.conftest import png, stored
from tests.support.roundtrips import RoundTrips
from tests.support.services import postgresql_only

pytestmark = [
    postgresql_only("the PostgreSQL executor's round trips"),
    pytest.mark.django_db(transaction=True),
]

SEND_TRIPS = 4  # BEGIN, the reads, the writes, COMMIT (tests/messaging/test_send_pg.py)


def upload(user) -> str:
    made = attachments.upload_create(
        owner=user, uploaded_file=SimpleUploadedFile("a.png", png(8, 8), "image/png")
    )
    return str(made.pk)


def trips_of(call):
    connection.ensure_connection()
    with RoundTrips(connection.connection.pgconn) as trips:
        result = call()
    return trips.count, result


def test_a_batch_with_files_takes_the_round_trips_of_one_without(user, room):
    message_send_many([SendRequest(room.pk, user, "warm", uuid.uuid4())])  # prepares
    message_send_many([SendRequest(room.pk, user, "warm", uuid.uuid4(), None, [upload(user)])])
    plain = [SendRequest(room.pk, user, f"m{i}", uuid.uuid4()) for i in range(20)]
    with_files = [
        SendRequest(room.pk, user, f"f{i}", uuid.uuid4(), None, [upload(user), upload(user)])
        for i in range(20)
    ]

    plain_trips, _ = trips_of(lambda: message_send_many(plain))
    file_trips, results = trips_of(lambda: message_send_many(with_files))

    assert plain_trips == SEND_TRIPS
    assert file_trips == SEND_TRIPS
    assert all(len(r.envelope["data"]["attachments"]) == 2 for r in results)
    assert Upload.objects.filter(message__isnull=False).count() == 41


def test_deleting_a_message_with_files_takes_the_round_trips_of_one_without(user, room):
    def sent(files):
        event = factories.send(room, user, "x", attachments=files)
        return Message.objects.get(pk=event.envelope["data"]["id"])

    messaging.message_delete(message=sent([]), actor=user)  # prepares
    bare, with_file = sent([]), sent([upload(user)])
    name = Upload.objects.get(message=with_file).file

    bare_trips, _ = trips_of(lambda: messaging.message_delete(message=bare, actor=user))
    file_trips, _ = trips_of(lambda: messaging.message_delete(message=with_file, actor=user))

    assert file_trips == bare_trips
    assert not stored(name)  # removed after the commit
    assert not Upload.objects.exists()
