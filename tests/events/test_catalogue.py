"""apps.events.catalogue's pure helpers."""

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from apps.events.catalogue import format_ts


@pytest.mark.parametrize(
    "dt, text",
    [
        (datetime(2026, 12, 4, 18, 44, 33, 121093, tzinfo=UTC), "2026-12-04T18:44:33.121093Z"),
        (datetime(2026, 1, 1, tzinfo=UTC), "2026-01-01T00:00:00.000000Z"),  # zero microseconds
        (
            datetime(2026, 7, 1, 2, 0, 0, 7, tzinfo=ZoneInfo("Europe/Paris")),
            "2026-07-01T00:00:00.000007Z",
        ),
        (
            datetime(2026, 3, 1, 23, 30, tzinfo=timezone(timedelta(hours=-5))),
            "2026-03-02T04:30:00.000000Z",
        ),
        (datetime(2026, 6, 1, 12, tzinfo=ZoneInfo("UTC")), "2026-06-01T12:00:00.000000Z"),
    ],
)
def test_format_ts_is_utc_with_microseconds_and_z(dt, text):
    assert format_ts(dt) == text
    assert format_ts(dt) == dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # as before
