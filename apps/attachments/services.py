"""Uploads: storing a file, who may read it, its links, and removing it with its message.

A file lives in the `uploads` storage (Django's storage API: the filesystem under UPLOAD_ROOT,
or S3-compatible object storage) under a random key; its row (Upload) names it. The row is
attached to a message by the send that lists it (apps.attachments.send, in the send's
transaction). The message's redaction deletes the rows in its transaction and the files from
storage right after its commit. Uploads never sent are purged after UPLOAD_UNUSED_HOURS (a
beat job).
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from celery import current_app
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import signing
from django.core.files.storage import storages
from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.core.errors import ServiceError, forbidden, invalid, not_found
from apps.core.sql import Statement
from apps.events.services import after_commit
from apps.rooms import services as rooms

from . import files, sniff
from .models import IMAGE_TYPES, Upload

logger = logging.getLogger(__name__)

FILE, THUMBNAIL = "file", "thumbnail"
API_PREFIX = "/api/uploads/"
THUMBNAIL_TASK = "apps.attachments.tasks.make_thumbnail"
_SALT = "apps.attachments.link"


class UnsupportedType(ServiceError):
    """A type the site does not take: 415 with the contract's code `invalid` (PROTOCOL §8)."""

    def __init__(self, message: str):
        super().__init__("invalid", message, field="file")

    @property
    def status(self) -> int:
        return 415


def storage():
    return storages["uploads"]


def check_size(size: int) -> None:
    if size > settings.UPLOAD_MAX_BYTES:
        raise ServiceError(
            "too_large", f"the file is larger than the {_mib(settings.UPLOAD_MAX_BYTES)} limit"
        )


def _mib(n: int) -> str:
    return f"{n / 1048576:g} MiB" if n >= 1048576 else f"{n} bytes"


def upload_create(*, owner, uploaded_file) -> Upload:
    """Store an uploaded file (a Django UploadedFile) for `owner`: size limit (too_large),
    type sniffed from its bytes and checked against UPLOAD_ALLOWED_TYPES (415), an image
    must decode as one (415). Its thumbnail is made by a worker after the commit."""
    if uploaded_file is None:
        raise invalid("a file is required (multipart field `file`)", field="file")
    check_size(uploaded_file.size)
    if uploaded_file.size == 0:
        raise invalid("the file is empty", field="file")
    uploaded_file.seek(0)
    content_type = sniff.sniff(uploaded_file.read(sniff.HEAD_BYTES))
    if content_type not in settings.UPLOAD_ALLOWED_TYPES:
        raise UnsupportedType(f"files of type {content_type} are not accepted")
    width = height = None
    if content_type in IMAGE_TYPES:
        try:
            width, height = files.image_size(uploaded_file, content_type)
        except files.BadImage as exc:
            raise UnsupportedType(str(exc)) from None
    upload = Upload(
        owner=owner,
        name=files.clean_name(uploaded_file.name),
        size=uploaded_file.size,
        content_type=content_type,
        width=width,
        height=height,
    )
    uploaded_file.seek(0)
    upload.file = storage().save(f"{upload.pk.hex}/file", uploaded_file)
    try:
        with transaction.atomic():
            upload.save(force_insert=True)
            if upload.is_image:
                after_commit(lambda: _queue_thumbnail(upload.pk))
    except BaseException:
        storage().delete(upload.file)
        raise
    return upload


def _queue_thumbnail(upload_id) -> None:
    # By name: the task (an interface) calls this module, not the other way round.
    current_app.send_task(THUMBNAIL_TASK, args=[str(upload_id)])


# --- Reading ------------------------------------------------------------------------------------


def get_upload(upload_id) -> Upload | None:
    try:
        key = uuid.UUID(str(upload_id))
    except ValueError:
        return None
    return Upload.objects.select_related("message__room").filter(pk=key).first()


def check_can_read(upload: Upload | None, user) -> Upload:
    """The uploader reads an upload not sent yet; once attached, whoever may read the
    message's room (the view rule, bans included) while the message is not deleted. Anyone
    else: not_found (the same answer as a missing one)."""
    missing = "file not found"
    if upload is None or user is None or not user.is_authenticated or not user.is_active:
        raise not_found(missing)
    message = upload.message
    if message is None:
        if upload.owner_id != user.pk:
            raise not_found(missing)
        return upload
    if message.deleted_at is not None:
        raise not_found(missing)
    rooms.check_can_read(message.room, user, missing=missing)
    return upload


def path(upload_id, kind: str = FILE) -> str:
    """The stable path of the authorized view (the caller's session or token decides)."""
    return f"{API_PREFIX}{upload_id}/{kind}/"  # chatproject/api_urls.py: uploads/<id>/<kind>/


def signed_url(upload_id, user, kind: str = FILE) -> str:
    """A link that works without credentials for UPLOAD_URL_MAX_AGE seconds, as `user`: the
    view still checks that `user` may read the room when it is used."""
    token = signing.dumps([user.pk, kind], salt=f"{_SALT}:{upload_id}", compress=True)
    return f"{path(upload_id, kind)}?sig={token}"


def user_of_link(upload_id, kind: str, token: str):
    """The user a signed link was made for; forbidden when it expired or does not match."""
    try:
        user_id, signed_kind = signing.loads(
            token, salt=f"{_SALT}:{upload_id}", max_age=settings.UPLOAD_URL_MAX_AGE
        )
    except signing.SignatureExpired:
        raise forbidden("this link has expired; reload the message for a new one") from None
    except (signing.BadSignature, ValueError, TypeError):
        raise forbidden("this link is not valid") from None
    if signed_kind != kind:
        raise forbidden("this link is not valid")
    return get_user_model().objects.filter(pk=user_id, is_active=True).first()


def event_data(upload: Upload) -> dict:
    """An attachment as message.created carries it: stable paths of the authorized view
    (the envelope is the same for every reader and stays in the log; links are signed per
    reader in REST answers)."""
    return {
        "id": str(upload.pk),
        "name": upload.name,
        "size": upload.size,
        "content_type": upload.content_type,
        "width": upload.width,
        "height": upload.height,
        "url": path(upload.pk, FILE),
        "thumbnail_url": path(upload.pk, THUMBNAIL) if upload.thumbnail else None,
    }


def payload(upload: Upload, user) -> dict:
    """An upload as REST answers it to `user`: signed, expiring links."""
    data = event_data(upload)
    data["url"] = signed_url(upload.pk, user, FILE)
    if upload.thumbnail:
        data["thumbnail_url"] = signed_url(upload.pk, user, THUMBNAIL)
    return data


def presigned_url(name: str, *, content_type: str, disposition: str) -> str | None:
    """S3: a presigned GET of the object with our Content-Type and Content-Disposition (the
    caller checked the reader first); None for storages that cannot sign (the filesystem)."""
    backend = storage()
    if not hasattr(backend, "bucket_name"):
        return None
    return backend.url(
        name,
        parameters={
            "ResponseContentType": content_type,
            "ResponseContentDisposition": disposition,
        },
        expire=min(300, settings.UPLOAD_URL_MAX_AGE),
    )


# --- Removing -----------------------------------------------------------------------------------


def remove_for_messages(message_ids) -> int:
    """A redaction (SQLite; PostgreSQL uses delete_statement): remove the uploads of these
    messages in the redacting transaction, their files from storage after its commit."""
    ids = list(message_ids)
    if not ids:
        return 0
    doomed = list(
        Upload.objects.select_for_update().of_messages(ids).values_list("pk", "file", "thumbnail")
    )
    return _remove(doomed)


def delete_statement(message_ids: list[int]) -> Statement:
    """PostgreSQL: a redaction's DELETE of its messages' uploads, returning their storage
    names (the last statement of the redaction's one combined statement)."""
    return Statement(
        f"DELETE FROM {Upload._meta.db_table} WHERE message_id = ANY(%b::bigint[]) "
        "RETURNING file, thumbnail",
        [list(message_ids)],
        True,
    )


def delete_files_on_commit(rows) -> None:
    """Remove these (file, thumbnail) storage names once the transaction commits."""
    names = [name for row in rows for name in row if name]
    if names:
        after_commit(lambda: delete_files(names))


def remove_for_seqs(*, room_id: int, start: int, stop: int) -> int:
    """Retention: remove the uploads of the room's messages with start <= seq < stop (rows
    now, in the purge's transaction; files after its commit)."""
    doomed = list(
        Upload.objects.select_for_update(of=("self",))
        .filter(message__room_id=room_id, message__seq__gte=start, message__seq__lt=stop)
        .values_list("pk", "file", "thumbnail")
    )
    return _remove(doomed)


def _remove(doomed) -> int:
    if not doomed:
        return 0
    Upload.objects.filter(pk__in=[pk for pk, _, _ in doomed]).delete()
    delete_files_on_commit([(file, thumb) for _, file, thumb in doomed])
    return len(doomed)


def delete_files(names) -> None:
    backend = storage()
    for name in names:
        try:
            backend.delete(name)
        except Exception:
            logger.warning("could not delete %s from upload storage", name, exc_info=True)


def purge_unused(*, now=None, batch_size: int = 500) -> int:
    """The beat job: uploads never sent within UPLOAD_UNUSED_HOURS, and any left attached to
    a deleted message, are removed (rows, then their files). Returns how many."""
    now = now or timezone.now()
    cutoff = now - timedelta(hours=settings.UPLOAD_UNUSED_HOURS)
    total = 0
    while True:
        with transaction.atomic():
            unused = Upload.objects.unused_before(cutoff)
            orphaned = Upload.objects.filter(message__deleted_at__isnull=False)
            doomed = list(
                (unused | orphaned)
                .select_for_update(skip_locked=True, of=("self",))
                .order_by("created_at")
                .values_list("pk", "file", "thumbnail")[:batch_size]
            )
            total += _remove(doomed)
        if len(doomed) < batch_size:
            return total


def thumbnail_saved(upload_id, name: str, size: tuple[int, int] | None) -> bool:
    """Record a thumbnail the worker stored; False (and the file removed) when the upload
    went meanwhile (its message was deleted, or it was purged)."""
    try:
        with transaction.atomic():
            upload = Upload.objects.select_for_update().filter(pk=upload_id).first()
            if upload is None or (upload.message_id and upload.message.deleted_at):
                after_commit(lambda: delete_files([name]))
                return False
            upload.thumbnail = name
            fields = ["thumbnail"]
            if size and upload.width is None:
                upload.width, upload.height = size
                fields += ["width", "height"]
            upload.save(update_fields=fields)
            return True
    except IntegrityError:
        delete_files([name])
        return False
