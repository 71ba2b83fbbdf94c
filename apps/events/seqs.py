"""The seq rule, the one implementation of it (pure: no I/O).

A room's log is numbered 1, 2, 3, ... with no gap: the room row's `last_seq` is the newest seq
handed out, and the next events take the seqs after it, one each, in the order they are
recorded. The caller holds the room row's lock (apps.rooms.services.lock_room, or the send
path's SELECT ... FOR NO KEY UPDATE, or the UPDATE of allocate_seqs), so seqs follow commit order.

Every writer of the log goes through `assign`: the send plan (apps.messaging.send_plan),
messages_redact (deletion, erasure), and apps.events.services.allocate_seqs (record_event: the
room services), which reads `last_seq` back from its UPDATE.

It lives with the events, not with the send plan that uses it most, because the event layer is
below the domain and may not import it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def assign(last_seqs: Mapping[int, int], room_ids: Iterable[int]) -> tuple[list[int], dict]:
    """Seqs for new events, one per entry of `room_ids` (each event's room, in recording order),
    after each room's `last_seqs[room id]`: (each event's seq, {room id: its new last_seq}).

    A room that appears in `room_ids` must be in `last_seqs` (KeyError otherwise)."""
    last: dict[int, int] = {}
    seqs = []
    for room_id in room_ids:
        seq = last.get(room_id, last_seqs[room_id]) + 1
        last[room_id] = seq
        seqs.append(seq)
    return seqs, last


def first_seqs(counts: Mapping[int, int], new_last_seqs: Mapping[int, int]) -> dict[int, int]:
    """For rooms whose `last_seq` was raised by `counts[room id]` to `new_last_seqs[room id]`
    (allocate_seqs' UPDATE ... RETURNING): {room id: the first of its `counts` new seqs}."""
    firsts = {}
    for room_id, count in counts.items():
        if count < 1:
            raise ValueError(f"room {room_id}: a count of seqs must be at least 1")
        before = new_last_seqs[room_id] - count
        seqs, _ = assign({room_id: before}, [room_id] * count)
        firsts[room_id] = seqs[0]
    return firsts
