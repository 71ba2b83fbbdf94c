"""Celery tasks of attachments: thumbnails (the message never waits for them) and the purge of
uploads never sent."""

from celery import shared_task
from django.db import DatabaseError


@shared_task(bind=True, ignore_result=True, max_retries=5, acks_late=True)
def make_thumbnail(self, upload_id: str):
    """Make an image upload's thumbnail; retried on a database or storage error (making it
    again is harmless: a finished one is skipped). A file Pillow cannot render keeps none."""
    from PIL import UnidentifiedImageError

    from .thumbnails import make

    try:
        make(upload_id)
    except UnidentifiedImageError:  # checked at upload, so not expected: no retry for it
        return
    except (DatabaseError, OSError) as exc:  # the database, or the storage (S3, a disk)
        raise self.retry(exc=exc, countdown=2**self.request.retries) from exc


@shared_task(ignore_result=True)
def purge_unused_uploads():
    """Celery beat (uploads-unused-purge): uploads never sent within UPLOAD_UNUSED_HOURS."""
    from .services import purge_unused

    purge_unused()
