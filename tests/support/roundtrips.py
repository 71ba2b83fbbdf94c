"""Counting PostgreSQL round trips: libpq's protocol trace of one psycopg connection.

    with RoundTrips(conn.pgconn) as trips:
        ...
    trips.count  # how many times the client read the server's answer to what it had sent

Each run of backend messages in the trace that follows frontend ones is one wait for the
server: a round trip. It counts the same on a loaded machine as on a quiet one.
"""

from __future__ import annotations

import tempfile
from typing import Self

from psycopg import pq


class RoundTrips:
    def __init__(self, pgconn):
        self.pgconn = pgconn
        self.messages: list[tuple[str, str]] = []  # (F or B, message type)

    def __enter__(self) -> Self:
        self.file = tempfile.TemporaryFile()
        self.pgconn.trace(self.file.fileno())
        self.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        return self

    def __exit__(self, *exc) -> None:
        self.pgconn.untrace()
        self.file.seek(0)
        for line in self.file.read().decode(errors="replace").splitlines():
            fields = line.split("\t")
            if len(fields) > 2 and fields[0] in ("F", "B"):
                self.messages.append((fields[0], fields[2].split(" ")[0]))
        self.file.close()

    @property
    def count(self) -> int:
        trips, previous = 0, None
        for side, _ in self.messages:
            if side == "B" and previous != "B":
                trips += 1
            previous = side
        return trips

    def sent(self, kind: str) -> int:
        """How many frontend messages of that type (e.g. "Parse", "Query") were sent."""
        return sum(1 for side, name in self.messages if side == "F" and name == kind)
