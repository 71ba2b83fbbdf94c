"""Content types from the bytes and clean names: pure functions."""

import pytest

from apps.attachments.files import clean_name
from apps.attachments.sniff import sniff
from tests.attachments.conftest import jpeg, png


@pytest.mark.parametrize(
    "head, expected",
    [
        (png(), "image/png"),
        (jpeg(20, 20), "image/jpeg"),
        (b"GIF89a\x01\x00\x01\x00", "image/gif"),
        (b"RIFF\x10\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"%PDF-1.7\n", "application/pdf"),
        (b"PK\x03\x04\x14\x00", "application/zip"),
        (b"MZ\x90\x00\x03\x00\x00\x00", "application/x-msdownload"),
        (b"\x7fELF\x02\x01\x01", "application/x-executable"),
        (b"hello, world\nsecond line\n", "text/plain"),
        ("héllo ünïcode".encode(), "text/plain"),
        (b"  <!DOCTYPE html><html><script>alert(1)</script>", "text/html"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'><script/></svg>", "text/html"),
        (b"\x00\x01\x02\x03binary", "application/octet-stream"),
        (b"text with a \x1b[31m terminal escape", "application/octet-stream"),
    ],
)
def test_sniff_names_the_type_from_the_first_bytes(head, expected):
    assert sniff(head) == expected


def test_text_cut_inside_a_multibyte_character_is_still_text():
    text = ("é" * 5000).encode()[:8191]  # ends in half a character
    assert sniff(text) == "text/plain"


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("photo.png", "photo.png"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\ada\\report.pdf", "report.pdf"),
        ("evil\u202egnp.exe", "evilgnp.exe"),  # the bidi override that hides an extension
        ("a\x00b\nc.txt", "abc.txt"),
        ('"quoted"; name=x.txt', "_quoted__ name_x.txt"),
        ("...hidden", "hidden"),
        ("", "file"),
        ("\u200b\u200b", "file"),
        ("x" * 300 + ".jpeg", "x" * 115 + ".jpeg"),
    ],
)
def test_clean_name(raw, expected):
    assert clean_name(raw) == expected
