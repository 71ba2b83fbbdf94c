"""The recent events of each followed room, read from the log once for every webhook.

Ten webhooks following the same rooms want the same events, a few milliseconds apart (each
plans its next batch when its last one is answered). Reading them from the log for each
webhook was most of the worker's database traffic and of its CPU, so the deliverer keeps,
per room, the events of the log from the lowest seq a cursor still needs up to the highest
one read, and cuts every webhook's batch from that: each event is read from the log about
once, whatever the number of webhooks.

What goes out is still the log as it is (PROTOCOL §6: a deleted message's events go out
redacted): a room's tail is read again whole when new events show a deletion (its
`message.deleted` is committed with the redaction), and at least every TAIL_SECONDS (the
other in-place rewrites: an erasure's usernames), so nothing is served from a read older
than that, the same order of time as a POST's own flight.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from dataclasses import dataclass, field

from django.db import connection
from django.db.models import Q, TextField
from django.db.models.functions import Cast

from apps.core.sql import Statement, run
from apps.events.models import Event

TAIL_SECONDS = 1.0
TAIL_MAX = 1000  # events held per room at most (a cursor further behind reads its own)
REWRITTEN_BEFORE = {"message.deleted"}  # appended with an in-place rewrite of earlier events


@dataclass
class RoomTail:
    """The log events of one room with seq in (start, end], in seq order."""

    start: int
    end: int
    read_at: float
    seqs: list[int] = field(default_factory=list)
    rows: list[tuple[str, str]] = field(default_factory=list)  # (type, envelope text)

    def add(self, rows: list[tuple[int, str, str]]) -> None:
        for seq, type, text in rows:
            self.seqs.append(seq)
            self.rows.append((type, text))

    def prepend(self, start: int, rows: list[tuple[int, str, str]]) -> None:
        """Hold (start, self.start] too: `rows`, read now (`read_at` stays the older read's)."""
        self.seqs[:0] = [seq for seq, _, _ in rows]
        self.rows[:0] = [(type, text) for _, type, text in rows]
        self.start = start

    def drop_to(self, seq: int) -> None:
        """Forget the events up to `seq` (every cursor is past them)."""
        if seq > self.start:
            cut = bisect_right(self.seqs, seq)
            del self.seqs[:cut], self.rows[:cut]
            self.start = min(seq, self.end)


class LogTail:
    def __init__(self, counted=None):
        self.rooms: dict[int, RoomTail] = {}
        # This round's reads for cursors far behind the others (more than TAIL_MAX below the
        # newest wanted): served once, not kept, so a webhook back from a long outage reads
        # its own ranges, not every event between it and the head.
        self.far: dict[int, RoomTail] = {}
        # Told of each read of the log: `raw` (sent past Django's cursor, so not seen by its
        # execute wrappers) and the `rows` it returned.
        self.counted = counted or (lambda raw, rows: None)

    def fill(self, wants: dict[int, list[tuple[int, int]]], floors: dict[int, int]) -> None:
        """Make the tail hold, per room, every range (lo, hi] its cursors want (`wants`:
        room -> ranges), reading from the log only what it lacks, in one statement (two when a
        deletion shows). Then drop what no cursor needs any more: `floors` holds, per room,
        the lowest seq of its cursors that are behind (rooms without one are dropped: they
        are read afresh when needed)."""
        now = time.monotonic()
        whole, below, more, far = {}, {}, {}, {}
        for room, ranges in wants.items():
            hi = max(upto for _, upto in ranges)
            near = [seq for seq, upto in ranges if upto > hi - TAIL_MAX]
            far[room] = [(seq, upto) for seq, upto in ranges if upto <= hi - TAIL_MAX]
            lo = min(near)
            tail = self.rooms.get(room)
            if tail is None or lo > tail.end or now - tail.read_at > TAIL_SECONDS:
                # What is wanted now only: re-reading from the lowest cursor behind (a dead
                # endpoint's batch in flight) every TAIL_SECONDS made its backlog be read again
                # and again; a cursor that wants less later has that read (below).
                whole[room] = (lo, hi)
                continue
            if lo < tail.start:  # a cursor back from a retry's wait: what it lacks, before
                below[room] = (lo, tail.start)
            if hi > tail.end:
                more[room] = (tail.end, hi)
        far = {room: ranges for room, ranges in far.items() if ranges}
        found = self.read(
            [(room, lo, hi) for part in (whole, below, more) for room, (lo, hi) in part.items()]
            + [(room, lo, hi) for room, ranges in far.items() for lo, hi in ranges]
        )
        for room, (lo, hi) in below.items():
            self.rooms[room].prepend(lo, [row for row in found.get(room, []) if lo < row[0] <= hi])
        self.far = {}
        for room, ranges in far.items():
            self.far[room] = RoomTail(0, 0, now)
            self.far[room].add(
                [row for row in found.get(room, []) if any(lo < row[0] <= hi for lo, hi in ranges)]
            )
        again = {}
        for room, (lo, hi) in more.items():
            rows = [row for row in found.get(room, []) if lo < row[0] <= hi]
            tail = self.rooms[room]
            if any(type in REWRITTEN_BEFORE for _, type, _ in rows):
                again[room] = (tail.start, hi)  # read again whole, as the log holds it now
            else:
                tail.add(rows)
                tail.end = hi
        if again:
            found.update(self.read([(room, lo, hi) for room, (lo, hi) in again.items()]))
        for room, (lo, hi) in {**whole, **again}.items():
            self.rooms[room] = RoomTail(lo, hi, now)
            self.rooms[room].add([row for row in found.get(room, []) if lo < row[0] <= hi])
        for room in list(self.rooms):
            if room not in floors:
                del self.rooms[room]
                continue
            keep = max(floors[room], self.rooms[room].end - TAIL_MAX)
            if room in wants:
                keep = min(keep, *(seq for seq, _ in wants[room]))
            self.rooms[room].drop_to(keep)

    def events(self, room: int, lo: int, hi: int, types: set[str] | None) -> list[str]:
        """The envelope texts of the room's events with seq in (lo, hi] (a range fill() was
        given), of `types` (None: all)."""
        tail = self.rooms.get(room)
        if tail is None or lo < tail.start:
            tail = self.far[room]
        rows = tail.rows[bisect_right(tail.seqs, lo) : bisect_right(tail.seqs, hi)]
        return [text for type, text in rows if types is None or type in types]

    def read(self, ranges: list[tuple[int, int, int]]) -> dict[int, list[tuple[int, str, str]]]:
        """The log events in each (room, lo, hi) range, seq in (lo, hi], as (seq, type,
        envelope text) per room in seq order, each once: one statement for all."""
        if not ranges:
            return {}
        if connection.vendor == "postgresql":
            # A fixed text (prepared once per connection) whatever the number of ranges; the
            # envelope as text, so a body is the rows joined, never parsed.
            table = connection.ops.quote_name(Event._meta.db_table)
            rows = run(
                [
                    Statement(
                        f"SELECT e.room_id, e.seq, e.type, e.envelope::text "
                        f"FROM unnest(%b::bigint[], %b::bigint[], %b::bigint[]) AS r(room, lo, hi) "
                        f"JOIN {table} e ON e.room_id = r.room AND e.seq > r.lo "
                        f"AND e.seq <= r.hi AND e.seq IS NOT NULL ORDER BY e.room_id, e.seq",
                        [list(column) for column in zip(*ranges, strict=True)],
                        fetch=True,
                    )
                ]
            )[0]
        else:
            where = Q()
            for room, lo, hi in ranges:
                where |= Q(room_id=room, seq__gt=lo, seq__lte=hi)
            rows = (
                Event.objects.filter(where)
                .order_by("room_id", "seq")
                .annotate(text=Cast("envelope", TextField()))
                .values_list("room_id", "seq", "type", "text")
            )
        found: dict[int, list[tuple[int, str, str]]] = {}
        count = 0
        for room, seq, type, text in rows:
            held = found.setdefault(room, [])
            if not held or held[-1][0] != seq:  # two ranges of a room may overlap
                held.append((seq, type, text))
            count += 1
        self.counted(raw=connection.vendor == "postgresql", rows=count)
        return found
