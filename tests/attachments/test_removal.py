"""Deletion means deletion (PROTOCOL §6) for files: a redaction (the author's delete, a
moderator's, an erasure) and retention remove the message's files and thumbnails from storage;
uploads never sent are purged after UPLOAD_UNUSED_HOURS."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.core.files.base import ContentFile
from django.test import override_settings
from django.utils import timezone

from apps.attachments import services as attachments
from apps.attachments.models import Upload
from apps.events.models import Event
from apps.messaging import services as messaging
from apps.messaging.erasure import erase_history
from apps.messaging.models import Message
from apps.messaging.retention import history_purge
from apps.rooms import services as rooms
from tests import factories
from tests.attachments.conftest import stored

pytestmark = pytest.mark.django_db


def with_thumbnail(upload_id) -> Upload:
    """As the worker would leave it: a thumbnail stored and recorded."""
    name = attachments.storage().save(f"{upload_id.hex}/thumbnail.jpg", ContentFile(b"thumb"))
    assert attachments.thumbnail_saved(upload_id, name, None)
    return Upload.objects.get(pk=upload_id)


def sent_with_file(room, author, uploaded):
    body = uploaded()
    upload = with_thumbnail(Upload.objects.get(pk=body["id"]).pk)
    event = factories.send(room, author, "with a file", attachments=[body["id"]])
    assert stored(upload.file) and stored(upload.thumbnail)
    return Message.objects.get(pk=event.envelope["data"]["id"]), upload


def assert_gone(upload):
    assert not Upload.objects.filter(pk=upload.pk).exists()
    assert not stored(upload.file)
    assert not stored(upload.thumbnail)


def test_the_authors_delete_removes_file_and_thumbnail_from_storage(
    client, user, room, uploaded, django_capture_on_commit_callbacks
):
    message, upload = sent_with_file(room, user, uploaded)
    reader_url = f"/api/uploads/{upload.pk}/file/"
    assert client.get(reader_url).status_code == 200

    with django_capture_on_commit_callbacks(execute=True):
        response = client.delete(f"/api/messages/{message.pk}/")
    assert response.status_code == 200

    assert_gone(upload)
    assert client.get(reader_url).status_code == 404
    created = Event.objects.get(room=room, seq=message.seq).envelope["data"]
    assert created["attachments"] == [] and created["redacted"] is True
    assert client.get(f"/api/messages/{message.pk}/").json()["attachments"] == []


def test_the_rows_go_in_the_redacting_transaction_and_the_files_only_after_its_commit(
    client, user, room, uploaded, django_capture_on_commit_callbacks
):
    message, upload = sent_with_file(room, user, uploaded)
    with django_capture_on_commit_callbacks(execute=False) as hooks:
        messaging.message_delete(message=message, actor=user)
    assert not Upload.objects.filter(pk=upload.pk).exists()
    assert stored(upload.file)  # a rollback would have needed it
    assert client.get(f"/api/uploads/{upload.pk}/file/").status_code == 404
    assert client.get(f"/api/uploads/{upload.pk}/thumbnail/").status_code == 404
    for hook in hooks:
        hook()
    assert_gone(upload)


def test_the_purge_also_sweeps_files_left_on_a_deleted_message(
    user, room, uploaded, django_capture_on_commit_callbacks
):
    message, upload = sent_with_file(room, user, uploaded)
    Message.objects.filter(pk=message.pk).update(deleted_at=timezone.now())  # not redacted
    assert factories.api_client(user).get(f"/api/uploads/{upload.pk}/file/").status_code == 404
    with django_capture_on_commit_callbacks(execute=True):
        assert attachments.purge_unused() == 1
    assert_gone(upload)


def test_a_moderators_redaction_removes_the_files(
    user, other_user, room, uploaded, django_capture_on_commit_callbacks
):
    rooms.room_join(room=room, user=other_user)
    their = factories.api_client(other_user)

    def upload_as_other():
        from tests.attachments.conftest import png, post_upload

        return post_upload(their, png()).json()

    body = upload_as_other()
    event = factories.send(room, other_user, "spam", attachments=[body["id"]])
    message = Message.objects.get(pk=event.envelope["data"]["id"])
    upload = Upload.objects.get(pk=body["id"])

    with django_capture_on_commit_callbacks(execute=True):
        messaging.message_delete(message=message, actor=user, reason="spam")
    assert_gone(upload)


def test_erasure_removes_every_file_the_account_sent(
    user, room, uploaded, django_capture_on_commit_callbacks
):
    first = sent_with_file(room, user, uploaded)[1]
    second = sent_with_file(room, user, uploaded)[1]
    type(user).objects.filter(pk=user.pk).update(is_active=False)

    with django_capture_on_commit_callbacks(execute=True):
        erase_history(user_id=user.pk)
    assert_gone(first)
    assert_gone(second)


def test_retention_removes_the_files_of_the_messages_it_purges(
    user, room, uploaded, django_capture_on_commit_callbacks
):
    old_message, old_upload = sent_with_file(room, user, uploaded)
    rooms.room_update(room=room, actor=user, retention_days=1)
    cutoff_seq = Event.objects.filter(room=room).order_by("-seq").first().seq
    old = timezone.now() - timedelta(days=3)
    Event.objects.filter(room=room, seq__lte=cutoff_seq).update(ts=old)
    Event.objects.filter(room=room, seq__lte=cutoff_seq).mark_published()
    _, recent_upload = sent_with_file(room, user, uploaded)

    with django_capture_on_commit_callbacks(execute=True):
        result = history_purge()
    assert result.messages == 1
    assert not Message.objects.filter(pk=old_message.pk).exists()
    assert_gone(old_upload)
    assert stored(recent_upload.file) and Upload.objects.filter(pk=recent_upload.pk).exists()


def test_unused_uploads_are_purged_after_the_setting_and_sent_ones_stay(
    user, room, uploaded, django_capture_on_commit_callbacks
):
    stale = Upload.objects.get(pk=uploaded()["id"])
    fresh = Upload.objects.get(pk=uploaded()["id"])
    sent = Upload.objects.get(pk=uploaded()["id"])
    factories.send(room, user, "kept", attachments=[str(sent.pk)])
    long_ago = timezone.now() - timedelta(hours=30)
    Upload.objects.filter(pk__in=[stale.pk, sent.pk]).update(created_at=long_ago)

    with (
        override_settings(UPLOAD_UNUSED_HOURS=24),
        django_capture_on_commit_callbacks(execute=True),
    ):
        assert attachments.purge_unused() == 1
    assert_gone(stale)
    assert stored(fresh.file) and stored(sent.file)
    with (
        override_settings(UPLOAD_UNUSED_HOURS=24),
        django_capture_on_commit_callbacks(execute=True),
    ):
        assert attachments.purge_unused(now=timezone.now() + timedelta(hours=25)) == 1
    assert_gone(fresh)
    assert stored(sent.file)


def test_the_purge_is_a_beat_job():
    from django.conf import settings

    entry = settings.CELERY_BEAT_SCHEDULE["uploads-unused-purge"]
    assert entry["task"] == "apps.attachments.tasks.purge_unused_uploads"
    from chatproject.celery import app

    app.loader.import_default_modules()
    assert entry["task"] in app.tasks


def test_a_thumbnail_finished_after_the_deletion_is_removed(
    user, room, uploaded, django_capture_on_commit_callbacks
):
    body = uploaded()
    event = factories.send(room, user, "x", attachments=[body["id"]])
    message = Message.objects.get(pk=event.envelope["data"]["id"])
    messaging.message_delete(message=message, actor=user)
    name = attachments.storage().save(f"{message.pk}-late.jpg", ContentFile(b"late"))
    with django_capture_on_commit_callbacks(execute=True):
        assert attachments.thumbnail_saved(uuid.UUID(body["id"]), name, None) is False
    assert not stored(name)
