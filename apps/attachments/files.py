"""File names and image checks for uploads (pure functions but for Pillow)."""

from __future__ import annotations

import posixpath
import unicodedata

from django.conf import settings
from PIL import Image, UnidentifiedImageError

NAME_MAX = 120
# Pillow's format name for each image type we accept: a PNG must decode as a PNG.
PIL_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/gif": "GIF", "image/webp": "WEBP"}
_UNSAFE = set("<>:\"/\\|?*;%'`$&{}[]=")


def clean_name(name) -> str:
    """A file name safe to show and to put in a Content-Disposition: the last path part of
    what the client sent, NFC, without control, format (bidi) or shell/URL-special characters,
    no leading dots, at most NAME_MAX characters (the extension kept). "file" when nothing is
    left."""
    name = str(name or "").replace("\\", "/")
    name = posixpath.basename(name)
    name = unicodedata.normalize("NFC", name)
    kept = []
    for ch in name:
        category = unicodedata.category(ch)
        if category[0] in "CZ" and ch != " ":  # controls, format (bidi), separators but space
            continue
        kept.append("_" if ch in _UNSAFE else ch)
    name = " ".join("".join(kept).split()).lstrip(". ")
    if len(name) > NAME_MAX:
        stem, dot, ext = name.rpartition(".")
        if dot and 0 < len(ext) <= 16:
            name = stem[: NAME_MAX - len(ext) - 1] + "." + ext
        else:
            name = name[:NAME_MAX]
    return name or "file"


class BadImage(ValueError):
    pass


def image_size(fileobj, content_type: str) -> tuple[int, int]:
    """(width, height) of an image that really decodes as the sniffed type (Pillow's verify,
    then its header), or BadImage. Bounded by UPLOAD_MAX_PIXELS (decompression bombs)."""
    fileobj.seek(0)
    try:
        with Image.open(fileobj, formats=[PIL_FORMATS[content_type]]) as image:
            width, height = image.size
            if width * height > settings.UPLOAD_MAX_PIXELS:
                raise BadImage(f"the image is larger than {settings.UPLOAD_MAX_PIXELS} pixels")
            image.verify()
        fileobj.seek(0)
        with Image.open(fileobj, formats=[PIL_FORMATS[content_type]]) as image:
            image.load()  # verify() checks structure; this decodes the pixels
    except BadImage:
        raise
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
        EOFError,
    ) as exc:
        raise BadImage("the file is not a valid image") from exc
    finally:
        fileobj.seek(0)
    return width, height
