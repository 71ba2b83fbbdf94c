"""RFC 6455 text frames as the server builds them (apps.core.wsframe)."""

from apps.core.wsframe import frame_payload, text_frame


def test_text_frame_lengths_round_trip():
    for size in (0, 125, 126, 65535, 65536, 70000):
        payload = b"x" * size
        frame = text_frame(payload)
        assert frame[0] == 0x81
        assert frame_payload(frame) == payload
        assert len(frame) - size == (2 if size < 126 else 4 if size < 65536 else 10)
