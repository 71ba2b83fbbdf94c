"""chatproject.serve.whole_text_frames: the whole client text frames at the start of a read
are unmasked for the app's on_text; everything from the first frame it must not take (or the
app does not take) is left to autobahn, byte for byte."""

import os

from chatproject.serve import whole_text_frames
from tests.support.rawws import client_frame


def taking(answers=None):
    """A take() that records every payload offered, and answers from `answers` (else True)."""
    seen = []
    answers = list(answers or [])

    def take(payload):
        seen.append(payload)
        return answers.pop(0) if answers else True

    return seen, take


def test_every_whole_text_frame_of_a_read_is_unmasked_in_order():
    payloads = [b'{"type":"ping"}', b"x" * 125, b"y" * 126, os.urandom(64).hex().encode() * 500]
    data = b"".join(client_frame(p) for p in payloads)
    seen, take = taking()
    assert whole_text_frames(data, take) == len(data)
    assert seen == payloads


def test_the_first_frame_not_taken_and_all_after_it_are_left():
    frames = [client_frame(b"a"), client_frame(b"b"), client_frame(b"c")]
    seen, take = taking([True, False])
    assert whole_text_frames(b"".join(frames), take) == len(frames[0])
    assert seen == [b"a", b"b"]


def test_a_partial_frame_is_left_whole():
    first, second = client_frame(b"whole"), client_frame(b"z" * 300)
    for cut in (1, 2, 3, 7, len(second) - 1):  # inside the header, the mask, the payload
        seen, take = taking()
        assert whole_text_frames(first + second[:cut], take) == len(first)
        assert seen == [b"whole"]


def test_frames_it_must_not_take_are_left_to_autobahn():
    long_form = bytes([0x81, 0x80 | 126, 0, 5]) + b"\1\2\3\4" + b"abcde"  # 16-bit length of 5
    others = {
        "binary": client_frame(b"bin", opcode=0x2),
        "ping control frame": client_frame(b"", opcode=0x9),
        "close": client_frame(b"\x03\xe8", opcode=0x8),
        "first fragment": bytes([0x01, 0x84]) + b"\0" * 4 + b"part",
        "continuation": bytes([0x80, 0x84]) + b"\0" * 4 + b"more",
        "unmasked": bytes([0x81, 0x03]) + b"abc",
        "empty": bytes([0x81, 0x80]) + b"\0" * 4,
        "64-bit length": client_frame(b"q" * 65536),
        "RSV bit set": bytes([0xC1, 0x83]) + b"\0" * 4 + b"abc",
        "length not in its shortest form": long_form,
    }
    for name, frame in others.items():
        seen, take = taking()
        lead = client_frame(b"lead")
        assert whole_text_frames(lead + frame + client_frame(b"after"), take) == len(lead), name
        assert seen == [b"lead"], name
