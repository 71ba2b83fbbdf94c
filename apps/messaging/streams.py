"""Per-room ordering of the events this process hands to its sockets (PROTOCOL §3): no I/O.

- Per room the stream keeps `head`: the last seq handed to local subscribers. The stream is
  contiguous: seq head+1 is delivered at once; a later seq waits in `pending` while the gap is
  filled from the event log (after a short grace, since two processes committing into one room
  reach Redis in either order); seq <= head is a duplicate and dropped.
- Per subscription `last` is the last seq sent to that socket; a subscription registers (and
  buffers live events) before its replay query, so nothing falls between replay and live.
- An event that revokes a subscriber's access (banned, left, kicked) is the last one that
  subscription gets: it ends there (`Subscription.ended`) and is handed back to the caller.

The methods change the stream and write frames to the subscribers' connections (anything with
`write(bytes)` and `user_id`); what needs I/O comes back as a `Step`: the subscriptions to drop
(each with the event that cut it off) and whether a gap is left to fill from the log. The hub
(apps.messaging.hub) does both.
"""

from __future__ import annotations

from apps.core.wsframe import text_frame
from apps.events.fanout import revoked_user, serialize
from apps.events.observability import WS_EVENTS_DELIVERED


class Item:
    """One event ready to go out: its seq, its WebSocket frame, and whom it cuts off."""

    __slots__ = ("seq", "data", "type", "revokes")

    def __init__(self, seq, data, type, revokes=None):
        self.seq, self.data, self.type, self.revokes = seq, data, type, revokes

    @classmethod
    def from_envelope(cls, envelope: dict) -> Item:
        return cls(
            envelope["seq"],
            text_frame(serialize(envelope).encode()),
            envelope["type"],
            revoked_user(envelope),
        )

    @property
    def reason(self) -> str:
        """The `unsubscribed` reason of a subscription this event ends."""
        return "banned" if self.type == "member.banned" else "left"


class Subscription:
    """One socket following one room."""

    __slots__ = ("conn", "room_id", "last", "buffer", "stream_from", "ended")

    def __init__(self, conn, room_id):
        self.conn = conn
        self.room_id = room_id
        self.last = 0
        self.buffer: list[Item] | None = []  # live events while subscribing; None once live
        self.stream_from: int | None = None  # the room stream reaches this sub for seq > this
        self.ended = False  # an event revoked the user's access: nothing more is written

    def push(self, item: Item) -> bool:
        """Write one seq'd event unless the socket has it already; True if written. An event
        that revokes this socket's user ends the subscription (see `ended`)."""
        if self.ended or item.seq <= self.last:
            return False
        self.last = item.seq
        self.conn.write(item.data)
        if item.revokes is not None and item.revokes == self.conn.user_id:
            self.ended = True
        return True


class Step:
    """What a change of a stream leaves to its caller."""

    __slots__ = ("revoked", "fill")

    def __init__(self):
        self.revoked: list[tuple[Subscription, Item]] = []  # drop these, say `unsubscribed`
        self.fill = False  # a gap is left: fill it from the event log

    def __repr__(self):
        return f"Step(revoked={[(s.room_id, i.seq) for s, i in self.revoked]}, fill={self.fill})"


class RoomStream:
    """One followed room: its subscribers, its head and the events waiting for a gap."""

    __slots__ = ("room_id", "subs", "head", "pending", "fill_task", "joined", "seen_db_last")

    def __init__(self, room_id):
        self.room_id = room_id
        self.subs: dict[object, Subscription] = {}  # connection -> its subscription
        self.head: int | None = None
        self.pending: dict[int, Item] = {}
        self.fill_task = None  # the hub's asyncio task filling a gap, if any
        self.joined = None  # the hub's future: the room's channel-layer group is joined
        self.seen_db_last: int | None = None

    def set_base(self, head: int) -> Step:
        """The first head of the stream (the room's last_seq read by a first subscriber)."""
        self.head = head
        for sub in self.subs.values():
            if sub.stream_from is None:
                sub.stream_from = head
        return self.drain()

    def on_seq(self, item: Item) -> Step:
        """A live seq'd event from the channel layer."""
        step = Step()
        head = self.head
        if head is not None and item.seq <= head:
            return step
        if head is not None and item.seq == head + 1:
            self._advance(item, step)
            return self.drain(step)
        self.pending[item.seq] = item
        step.fill = head is not None
        return step

    def drain(self, step: Step | None = None) -> Step:
        """Deliver the pending events that follow the head, forget the stale ones."""
        step = step or Step()
        pending = self.pending
        if not pending:
            return step
        for seq in [s for s in pending if s <= self.head]:
            del pending[seq]
        while self.head + 1 in pending:
            self._advance(pending.pop(self.head + 1), step)
        if pending:
            step.fill = True
        return step

    def _advance(self, item: Item, step: Step) -> None:
        self.head = item.seq
        sent = 0
        for sub in self.subs.values():
            if sub.buffer is not None:
                sub.buffer.append(item)
            elif sub.push(item):
                sent += 1
                if sub.ended:
                    step.revoked.append((sub, item))
        if sent:
            WS_EVENTS_DELIVERED.labels(item.type).inc(sent)

    def fill_target(self, target: int | None = None) -> int | None:
        """The last seq a gap fill must read up to (at least `target`), or None if none."""
        want = target or 0
        if self.pending:
            want = max(want, min(self.pending) - 1)
        if self.head is None or want <= self.head:
            return None
        return want

    def from_log(self, rows) -> Step | None:
        """Deliver (seq, envelope) rows read from the log after the head; None if seq head+1
        is not among them: the log is gapless but for the prefix retention removed, so it was
        purged (see skip_to)."""
        if not rows or rows[0][0] > self.head + 1:
            return None
        step = Step()
        for seq, envelope in rows:
            if seq == self.head + 1:
                self._advance(Item.from_envelope(envelope), step)
        return self.drain(step)

    def skip_to(self, history_start: int) -> Step | None:
        """Move the head up to history_start - 1 (the seqs before were purged by retention);
        None if it is there already."""
        if self.head is None or history_start - 1 <= self.head:
            return None
        self.head = history_start - 1
        return self.drain()

    def lost(self, db_last: int) -> int | None:
        """Given the room's committed last_seq now, the seq up to which the channel layer lost
        events (committed a check ago and still not here), or None."""
        previous, self.seen_db_last = self.seen_db_last, db_last
        if previous is not None and self.head is not None and previous > self.head:
            return previous
        return None

    def broadcast(self, frame: bytes, event_type: str) -> None:
        """An ephemeral event (typing, presence) to every live subscriber: no order, no seq."""
        for sub in self.subs.values():
            if sub.buffer is None:
                sub.conn.write(frame)
        WS_EVENTS_DELIVERED.labels(event_type).inc(len(self.subs))
