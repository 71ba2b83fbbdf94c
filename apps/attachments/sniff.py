"""The content type of a file, from its first bytes (magic numbers), never from its name or the
client's Content-Type. Pure functions: the unit tests feed them bytes."""

from __future__ import annotations

import unicodedata

OCTET_STREAM = "application/octet-stream"
HEAD_BYTES = 8192  # what `sniff` looks at

# (offset, magic, type). First match wins; a second magic at another offset is a tuple entry.
SIGNATURES: list[tuple[tuple[tuple[int, bytes], ...], str]] = [
    (((0, b"\x89PNG\r\n\x1a\n"),), "image/png"),
    (((0, b"\xff\xd8\xff"),), "image/jpeg"),
    (((0, b"GIF87a"),), "image/gif"),
    (((0, b"GIF89a"),), "image/gif"),
    (((0, b"RIFF"), (8, b"WEBP")), "image/webp"),
    (((0, b"%PDF-"),), "application/pdf"),
    (((0, b"PK\x03\x04"),), "application/zip"),
    (((0, b"PK\x05\x06"),), "application/zip"),  # an empty archive
    (((0, b"ID3"),), "audio/mpeg"),
    (((0, b"\xff\xfb"),), "audio/mpeg"),
    (((0, b"OggS"),), "audio/ogg"),
    (((4, b"ftyp"),), "video/mp4"),
    (((0, b"\x1a\x45\xdf\xa3"),), "video/webm"),
    # Recognised so that they are named (and refused by the default allowed list).
    (((0, b"MZ"),), "application/x-msdownload"),
    (((0, b"\x7fELF"),), "application/x-executable"),
    (((0, b"\xca\xfe\xba\xbe"),), "application/x-mach-binary"),
    (((0, b"\xcf\xfa\xed\xfe"),), "application/x-mach-binary"),
    (((0, b"\x1f\x8b"),), "application/gzip"),
    (((0, b"BM"),), "image/bmp"),
    (((0, b"II*\x00"),), "image/tiff"),
    (((0, b"MM\x00*"),), "image/tiff"),
]

# Text that a browser would run or render as a document if it were ever served as such.
_MARKUP = (b"<!doctype", b"<html", b"<script", b"<svg", b"<?xml", b"<body", b"<iframe", b"<head")


def sniff(head: bytes) -> str:
    """The type of a file that starts with `head` (at least its first HEAD_BYTES bytes)."""
    for magics, content_type in SIGNATURES:
        if all(head[offset : offset + len(magic)] == magic for offset, magic in magics):
            return content_type
    if _is_text(head):
        start = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
        if start.startswith(_MARKUP):
            return "text/html"
        return "text/plain"
    return OCTET_STREAM


def _is_text(head: bytes) -> bool:
    """UTF-8 (a sequence cut at the end of `head` aside) with no control characters but tab,
    line breaks and form feed."""
    if not head or b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:
            return False
        text = head[: exc.start].decode("utf-8")
    return not any(unicodedata.category(ch) == "Cc" and ch not in "\t\n\r\f" for ch in text)
