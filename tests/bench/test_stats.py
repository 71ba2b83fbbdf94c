"""The load generators' statistics (bench/stats.py): pure functions, no services."""

import pytest

from bench import stats


def step(rate, p99, *, lost=0, errors=0, unacked=0, closed=0, count=100):
    return {
        "rate": rate,
        "latency": {"count": count, "p99_ms": p99},
        "lost": lost,
        "errors": errors,
        "unacked": unacked,
        "closed": closed,
    }


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))
    assert stats.percentile(values, 0.5) == 50
    assert stats.percentile(values, 0.99) == 99
    assert stats.percentile(values, 1.0) == 100
    assert stats.percentile([7], 0.99) == 7
    assert stats.percentile([], 0.5) is None
    with pytest.raises(ValueError):
        stats.percentile(values, 1.5)


def test_latency_summary_converts_nanoseconds_to_milliseconds():
    summary = stats.latency_summary([3_000_000, 1_000_000, 2_000_000])
    assert summary == {"count": 3, "p50_ms": 2.0, "p99_ms": 3.0, "max_ms": 3.0}
    assert stats.latency_summary([])["p99_ms"] is None


def test_lost_counts_every_socket_that_missed_an_expected_id():
    assert stats.lost_deliveries({1, 2, 3}, [{1, 2, 3}, {1, 3}, set()]) == 4
    assert stats.lost_deliveries({1, 2}, [{1, 2, 99}]) == 0


def test_highest_held_stops_at_the_first_failed_step():
    steps = [step(10, 20.0), step(20, 80.0), step(40, 150.0), step(80, 90.0)]
    assert stats.highest_held(steps, p99_ms=100) == 20
    assert stats.highest_held([step(10, 20.0, lost=1)], p99_ms=100) is None
    assert stats.highest_held([step(10, 20.0), step(20, 30.0, closed=1)], p99_ms=100) == 10
    assert stats.highest_held([step(10, None, count=0)], p99_ms=100) is None


def test_ratio_and_merge_counts():
    assert stats.ratio(20, 80) == "0.25x"
    assert stats.ratio(None, 80) == "n/a"
    assert stats.ratio(20, 0) == "n/a"
    assert stats.merge_counts([{"a": 1}, {"a": 2, "b": 1}]) == {"a": 3, "b": 1}
