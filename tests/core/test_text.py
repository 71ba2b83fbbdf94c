"""apps/core/text.py: what counts as blank, and how bidirectional controls may be used."""

import pytest

from apps.core.errors import ServiceError
from apps.core.text import BIDI_MAX, check_text


def refusal(value, **kwargs) -> str | None:
    try:
        check_text(value, "body", multiline=kwargs.pop("multiline", True), **kwargs)
    except ServiceError as error:
        assert error.code == "invalid"
        return error.message
    return None


@pytest.mark.parametrize(
    "value",
    [
        "a",
        " a ",
        "e\u0301",
        "\u200bx",
        "👍",
        "١٢٣",
        "مرحبا",
        "line one\nline two\tend",
        "\u2067שלום\u2069 and \u202bx\u202c",
    ],
)
def test_visible_text_in_any_script_passes(value):
    assert refusal(value) is None


@pytest.mark.parametrize(
    "value",
    [
        "",
        " ",
        "\n\t",
        "\u200b",
        "\u200e\u200f",
        "\u2066\u2069",
        "\u3164",
        "\u115f\u1160",
        "\uffa0",
        "\u2800",
        "\ufeff",
        "\u00ad",
        "\U000e0061",
        "\ufe0f",
        "\u034f",
        "\u180e",
        "\u3000",
    ],
)
def test_text_with_nothing_visible_is_refused(value):
    assert "invisible" in refusal(value)


def test_blank_is_allowed_only_when_asked_and_controls_never():
    assert refusal("  ", allow_blank=True) is None
    assert "control" in refusal("\x1c", allow_blank=True)


@pytest.mark.parametrize("value", ["a\x00", "a\x7f", "a\x85", "a\u2028b", "a\ud800"])
def test_control_characters_are_refused(value):
    assert "control" in refusal(value)


def test_tab_and_newline_only_where_the_text_has_lines():
    assert refusal("a\nb", multiline=False) is not None
    assert refusal("a\tb", multiline=False) is not None


@pytest.mark.parametrize(
    "value",
    ["x\u202e", "x\u2067", "x\u202c", "x\u2069", "\u2067a\u202bb\u2069\u202c", "\u202ea\u2069"],
)
def test_unbalanced_bidi_controls_are_refused(value):
    assert "unbalanced" in refusal(value)


def test_more_than_bidi_max_controls_are_refused_even_when_balanced():
    pairs = BIDI_MAX // 2
    assert refusal("\u2066x\u2069" * pairs) is None
    assert str(BIDI_MAX) in refusal("\u2066x\u2069" * (pairs + 1))
