"""Image thumbnails (Pillow), made by a Celery worker after the upload committed."""

from __future__ import annotations

import io
import logging

from django.conf import settings
from django.core.files.base import ContentFile
from PIL import Image, ImageOps

from . import services
from .files import PIL_FORMATS
from .models import Upload

logger = logging.getLogger(__name__)


def render(data: bytes, content_type: str, size: int) -> tuple[bytes, str, tuple[int, int]]:
    """A thumbnail of an image (its first frame), at most `size` pixels on the longer side,
    turned upright by its EXIF orientation: (bytes, Pillow format, (width, height) of the
    upright original). PNG when the image has transparency, else JPEG."""
    with Image.open(io.BytesIO(data), formats=[PIL_FORMATS[content_type]]) as image:
        image.seek(0)
        upright = ImageOps.exif_transpose(image)
        original = upright.size
        has_alpha = upright.mode in ("RGBA", "LA", "PA") or "transparency" in upright.info
        thumb = upright.convert("RGBA" if has_alpha else "RGB")
        thumb.thumbnail((size, size), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        fmt = "PNG" if has_alpha else "JPEG"
        thumb.save(out, fmt, **({"optimize": True} if fmt == "PNG" else {"quality": 85}))
    return out.getvalue(), fmt, original


def make(upload_id) -> str | None:
    """Make and store the upload's thumbnail; its storage name, or None when there is nothing
    to do (gone, not an image, made already)."""
    upload = Upload.objects.filter(pk=upload_id).first()
    if upload is None or not upload.is_image or upload.thumbnail:
        return None
    storage = services.storage()
    with storage.open(upload.file, "rb") as handle:
        data = handle.read()
    content, fmt, original = render(data, upload.content_type, settings.UPLOAD_THUMBNAIL_SIZE)
    name = storage.save(f"{upload.pk.hex}/thumbnail.{fmt.lower()}", ContentFile(content))
    if not services.thumbnail_saved(upload.pk, name, original):
        return None
    return name


def content_type_of(name: str) -> str:
    """A thumbnail's type, from the extension `make` gave its storage name (ours, not a
    client's)."""
    return "image/png" if name.endswith(".png") else "image/jpeg"
