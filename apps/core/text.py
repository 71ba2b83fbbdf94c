"""Rules for text people show each other (message bodies, room names and topics).

Refused, each with `invalid`: control characters; text with nothing visible in it (only
whitespace, format characters such as zero-width spaces and bidirectional controls, or the
blank "letters" used to fake empty names); and bidirectional embeddings, overrides or isolates
that are not properly closed, or more than BIDI_MAX of them. Each check is one compiled regular
expression over the text, so the send path pays a scan in C, not a loop in Python.
"""

from __future__ import annotations

import re
import unicodedata

from apps.core.errors import invalid

BIDI_MAX = 8  # embedding/override/isolate controls in one text (four nested or side-by-side pairs)

# Cc (C0, DEL, C1), lone surrogates and the line/paragraph separators. Tab and newline are
# allowed where the text may have several lines.
_CONTROL_MULTILINE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_CONTROL_ONE_LINE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")

# Letters and marks that render as nothing (fillers, the blank Braille pattern, variation
# selectors and the combining grapheme joiner on their own): the usual way to fake a blank name.
_BLANK_GLYPHS = "\u034f\u115f\u1160\u17b4\u17b5\u2800\u3164\uffa0"
_BLANK_RANGES = ((0xFE00, 0xFE0F), (0xE0100, 0xE01EF))

_PUSH_EMBEDDING = "\u202a\u202b\u202d\u202e"  # LRE RLE LRO RLO, closed by PDF (U+202C)
_PUSH_ISOLATE = "\u2066\u2067\u2068"  # LRI RLI FSI, closed by PDI (U+2069)
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069]")


def _blank_class() -> str:
    """A regex class of every character that shows nothing: whitespace, Cc, Cf, Zs/Zl/Zp and
    _BLANK_GLYPHS. (Format characters live in planes 0, 1 and 14 only.)"""
    codes = [
        c
        for c in (*range(0x20000), *range(0xE0000, 0xE1000))
        if unicodedata.category(chr(c)) in ("Cc", "Cf", "Zs", "Zl", "Zp")
    ]
    codes += [ord(c) for c in _BLANK_GLYPHS]
    for low, high in _BLANK_RANGES:
        codes += range(low, high + 1)
    codes = sorted(set(codes))
    ranges, start, prev = [], codes[0], codes[0]
    for code in codes[1:] + [None]:
        if code is not None and code == prev + 1:
            prev = code
            continue
        ranges.append(re.escape(chr(start)) + ("-" + re.escape(chr(prev)) if prev > start else ""))
        if code is not None:
            start = prev = code
    return "".join(ranges)


_VISIBLE = re.compile(f"[^\\s{_blank_class()}]")


def check_text(value: str, field: str, *, multiline: bool, allow_blank: bool = False) -> None:
    """Refuse control characters, text with nothing visible (unless allow_blank), and unbalanced
    or too many bidirectional controls. `value` is a str; its length is the caller's rule."""
    control = _CONTROL_MULTILINE if multiline else _CONTROL_ONE_LINE
    if control.search(value):
        raise invalid(f"{field} contains control characters")
    if not allow_blank and _VISIBLE.search(value) is None:
        raise invalid(f"{field} must not be empty or only invisible characters")
    if _BIDI.search(value) is not None:
        _check_bidi(value, field)


def _check_bidi(value: str, field: str) -> None:
    controls = _BIDI.findall(value)
    if len(controls) > BIDI_MAX:
        raise invalid(f"{field} has more than {BIDI_MAX} bidirectional controls")
    open_: list[str] = []
    for char in controls:
        if char in _PUSH_EMBEDDING or char in _PUSH_ISOLATE:
            open_.append(char)
        elif open_ and (open_[-1] in _PUSH_EMBEDDING) == (char == "\u202c"):
            open_.pop()
        else:
            open_.append(char)  # a close with nothing to close: unbalanced
            break
    if open_:
        raise invalid(
            f"{field} has unbalanced bidirectional controls "
            "(every embedding, override or isolate must be closed, in order)"
        )
