"""Pure statistics for the load generators (no I/O): percentiles, step summaries, verdicts."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence


def percentile(sorted_values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile of already sorted values (fraction in [0, 1]); None when empty."""
    if not sorted_values:
        return None
    if not 0.0 <= fraction <= 1.0:
        raise ValueError("fraction must be between 0 and 1")
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_summary(values_ns: Iterable[int]) -> dict:
    """p50/p99/max in milliseconds of latencies given in nanoseconds."""
    ordered = sorted(values_ns)

    def ms(value):
        return None if value is None else round(value / 1e6, 2)

    return {
        "count": len(ordered),
        "p50_ms": ms(percentile(ordered, 0.50)),
        "p99_ms": ms(percentile(ordered, 0.99)),
        "max_ms": ms(ordered[-1] if ordered else None),
    }


def lost_deliveries(expected: set[int], seen_per_socket: Iterable[set[int]]) -> int:
    """Deliveries owed to sockets that never arrived: each socket owes every expected id."""
    return sum(len(expected - seen) for seen in seen_per_socket)


def step_passes(step: dict, *, p99_ms: float) -> bool:
    """A fan-out step holds when p99 is within bound and nothing was lost, refused or closed."""
    return (
        step["latency"]["count"] > 0
        and step["latency"]["p99_ms"] is not None
        and step["latency"]["p99_ms"] <= p99_ms
        and step["lost"] == 0
        and step["errors"] == 0
        and step["unacked"] == 0
        and step["closed"] == 0
    )


def highest_held(steps: Sequence[dict], *, p99_ms: float) -> float | None:
    """The highest offered rate whose step passed, counting only the unbroken run from the bottom.

    A pass above a failure does not count: the ladder stops being "held" at the first failure.
    """
    best = None
    for step in sorted(steps, key=lambda s: s["rate"]):
        if not step_passes(step, p99_ms=p99_ms):
            break
        best = step["rate"]
    return best


def ratio(value: float | None, ceiling: float | None) -> str:
    """value / ceiling as a short string ("0.42x"), or "n/a" when either is missing or zero."""
    if value is None or not ceiling:
        return "n/a"
    return f"{value / ceiling:.2f}x"


def merge_counts(counters: Iterable[dict]) -> dict:
    """{key: n} dicts summed key by key."""
    merged: dict = {}
    for counter in counters:
        for key, n in counter.items():
            merged[key] = merged.get(key, 0) + n
    return merged


def trouble(step: dict) -> str:
    """What went wrong in a step besides latency (refusals, closes, missing acks), or ""."""
    if not (step["errors"] or step["closed"] or step["unacked"]):
        return ""
    return (
        f" errors={step['error_codes']} closed={step['closed']} {step['close_codes']}"
        f" unacked={step['unacked']}"
    )


def batch_delta(before: dict | None, after: dict | None) -> dict | None:
    """The group commits between two readings of the server's counters (ChatStack.batch_figures):
    how many batches, their mean size and mean time; None without both readings."""
    if before is None or after is None:
        return None
    count = after["batches"] - before["batches"]
    return {
        "batches": int(count),
        "mean_size": round((after["sends"] - before["sends"]) / count, 1) if count else 0,
        "mean_ms": round(1000 * (after["seconds"] - before["seconds"]) / count, 1) if count else 0,
    }


def batch_note(batches: dict | None) -> str:
    if not batches:
        return ""
    return (
        f"  [{batches['batches']} batches, {batches['mean_size']} sends, "
        f"{batches['mean_ms']} ms each]"
    )
